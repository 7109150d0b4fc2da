"""``selhn serve`` against hostile files and requests, on a real server on loopback: files
swapped for links, special files or other bytes after indexing, foreign ``Host`` headers,
bodies larger than they declare, images of many pixels, unreadable queries; and a bounded
load test. Every answer is checked, and no error carries a server path."""

import contextlib
import io
import json
import os
import shutil
import socket
import struct
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from serving import multipart, request, resident_mb, running_server, upload

from selhn.cli import main
from selhn.inference.encoder import Encoder
from selhn.inference.index.store import ImageIndex
from selhn.models import create_model
from selhn.models.transformer import WordPieceTokenizer

pytestmark = [pytest.mark.subprocess]


LIMIT_MB = 2  # the server's upload limit in these tests


@pytest.fixture(scope="module")
def photos(samples, tmp_path_factory):
    """A folder of 24 sample images, in two sub-folders, one image of 42 million pixels and two
    images whose names read as data URLs."""
    root = tmp_path_factory.mktemp("hostile") / "photos"
    images = sorted((samples.parent / "images").glob("*.png"))[:24]
    for number, image in enumerate(images):
        folder = root / ("a" if number % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / image.name)
    Image.new("1", (7000, 6000)).save(root / "vast.png")  # a few KB; 42 M pixels decoded
    for folder in ("data:image", "data:text"):  # names that read as data URLs
        (root / folder).mkdir()
    shutil.copy(images[0], root / "data:image" / "svg+xml,x.png")
    shutil.copy(images[1], root / "data:text" / "html,y.png")
    return root


@pytest.fixture(scope="module")
def served(photos, features_model, tmp_path_factory):
    """(address, server process id, index directory) of ``selhn serve`` over ``photos``."""
    out = tmp_path_factory.mktemp("hostile-index") / "index"
    command = ["index", "--checkpoint", str(features_model[1]), "--images", str(photos)]
    assert main([*command, "--out", str(out), "--no-progress"]) == 0
    options = ["--max-upload-mb", str(LIMIT_MB), "--allow-host", "photos.lan"]
    options += ["--upload-timeout", "3"]
    with running_server(out, *options) as (address, pid):
        yield address, pid, out


def png_bytes(size=(48, 48), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def assert_no_server_path(answer, *paths):
    text = json.dumps(answer) if not isinstance(answer, bytes) else answer.decode("latin-1")
    for path in paths:
        assert str(path) not in text, text


def row_of(index_dir, name):
    return ImageIndex(index_dir).files.index(name)


def test_a_file_swapped_after_indexing_is_refused_then_served_again_once_restored(served, photos):
    address, _, out = served
    names = [n for n in ImageIndex(out).files if n.endswith(".png") and n != "vast.png"]
    secret = photos.parent / "secret.txt"
    secret.write_text("root:x:0:0:private\n")
    cases = []

    def swap(name, action):
        path = photos / name
        original, stat = path.read_bytes(), path.stat()
        action(path)
        row = row_of(out, name)
        for endpoint in ("image", "thumb"):
            cases.append((name, endpoint, *request(address, "GET", f"/{endpoint}/{row}")[:2]))
        path.unlink()
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert request(address, "GET", f"/image/{row}")[:2] == (200, original)

    def link_to_secret(path):
        path.unlink()
        path.symlink_to(secret)

    def same_size_other_bytes(path):  # and the old modification time: only the hash tells
        stat = path.stat()
        path.write_bytes(bytes(reversed(path.read_bytes())))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def named_pipe(path):
        path.unlink()
        os.mkfifo(path)

    def touched(path):
        os.utime(path, ns=(0, 10**18))

    swap(names[0], link_to_secret)
    swap(names[1], same_size_other_bytes)
    swap(names[2], named_pipe)
    swap(names[3], touched)
    folder, name = names[4].split("/")  # the file's folder becomes a link to a look-alike
    decoy = photos.parent / "decoy"
    shutil.copytree(photos / folder, decoy)
    (photos / folder).rename(photos.parent / "moved")
    (photos / folder).symlink_to(decoy)
    row = row_of(out, names[4])
    cases.append((names[4], "image", *request(address, "GET", f"/image/{row}")[:2]))
    (photos / folder).unlink()
    (photos.parent / "moved").rename(photos / folder)
    assert request(address, "GET", f"/image/{row}")[0] == 200
    assert len(cases) == 9
    for name, endpoint, status, answer in cases:
        assert status == 410, (name, endpoint, answer)
        assert "is not served" in answer["error"], answer
        assert "root:" not in json.dumps(answer)
        assert_no_server_path(answer, photos, out)


def test_only_allowed_hosts_are_answered(served):
    address = served[0]
    for path in ("/api/search?text=a%20cat", "/api/info", "/image/0", "/thumb/0", "/"):
        status, answer, kind = request(address, "GET", path, headers={"Host": "attacker.example"})
        assert (status, kind) == (400, "application/json"), (path, answer)
        assert "does not answer for host 'attacker.example'" in answer["error"]
    port = address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "photos.lan"):
        assert request(address, "GET", "/api/info", headers={"Host": host})[0] == 200, host
    with socket.create_connection(address) as raw:  # HTTP/1.0 without a Host header
        raw.sendall(b"GET /api/info HTTP/1.0\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")


def send_chunked(address, declared: int | None, total: int) -> tuple[int, bytes]:
    """POST ``total`` bytes in 64 KB chunks (with a false Content-Length if ``declared``),
    stopping when the server answers: (bytes sent, the answer)."""
    head = "POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: multipart/form-data; boundary=x\r\n"
    head += f"Content-Length: {declared}\r\n" if declared is not None else ""
    chunk = b"x" * 65536
    sent, answer = 0, b""
    with socket.create_connection(address) as raw:
        raw.sendall((head + "\r\n").encode())
        raw.settimeout(0.01)
        try:
            while sent < total and not answer:
                raw.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                with contextlib.suppress(TimeoutError):
                    answer = raw.recv(4096)
        except OSError:  # the server closed the connection after answering
            pass
        raw.settimeout(10)
        while not answer.endswith(b"}"):
            more = raw.recv(4096)
            if not more:
                break
            answer += more
    return sent, answer


def test_uploads_are_limited_by_the_bytes_received_chunked_or_not(served):
    address, _, _ = served
    for declared in (100, None):
        sent, answer = send_chunked(address, declared, 300 * 2**20)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"larger than 2 MiB" in answer
        assert sent < 4 * 2**20  # refused once past the limit, not after 300 MB
    body, headers = multipart(png_bytes(), "small.png")
    chunks = iter([body[:1000], body[1000:]])
    status, answer, _ = request(address, "POST", "/api/search?k=3", chunks, headers)
    assert status == 200 and len(answer["hits"]) == 3  # a chunked upload within the limit


def test_images_of_many_pixels_are_decoded_a_few_at_a_time(served, photos):
    address, pid, out = served
    bomb = io.BytesIO()
    Image.new("1", (6320, 6320)).save(bomb, "PNG")  # 5 KB; 40 million pixels, under the limit
    before = resident_mb(pid)
    peak, done = [before], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb(pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    answers = []
    uploads = [
        threading.Thread(target=lambda: answers.append(upload(address, None, data=bomb.getvalue())))
        for _ in range(8)
    ]
    for thread in uploads:
        thread.start()
    for thread in uploads:
        thread.join()
    done.set()
    watcher.join()
    assert [a[0] for a in answers] == [200] * 8
    # one decode holds about 200 MB (a 40-million-pixel RGB image); two run at once
    assert peak[0] - before < 600, (before, peak[0])
    assert resident_mb(pid) < 1.2 * before, (before, resident_mb(pid))
    status, answer, _ = request(address, "GET", f"/thumb/{row_of(out, 'vast.png')}")
    assert status == 422 and "7000 x 6000 pixels; at most 40,000,000" in answer["error"]
    assert_no_server_path(answer, photos, out)


def test_unreadable_queries_and_bad_input_get_a_json_error_without_paths(served, photos):
    address, _, out = served
    cases = [
        (request(address, "GET", "/api/search?text=%00%00"), 400, "no readable character"),
        (request(address, "GET", "/api/search?text=%E2%80%8B"), 400, "no readable character"),
        (request(address, "GET", "/api/search?text=%EF%BF%BD"), 400, "no readable character"),
        (request(address, "GET", "/image/999"), 404, "no image 999"),
        (request(address, "GET", "/thumb/abc"), 422, "row: Input should be"),
        (upload(address, None, data=b"\x89PNG\r\n\x1a\n" + b"\0" * 50), 400, "not an image"),
    ]
    for (status, answer, kind), expected, words in cases:
        assert (status, kind) == (expected, "application/json"), answer
        assert words in answer["error"], answer
        assert_no_server_path(answer, photos, out)
    status, info, _ = request(address, "GET", "/api/info")
    assert status == 200 and "checkpoint" not in info["model"]
    assert_no_server_path(info, photos, out, out.parent)


def test_a_query_longer_than_the_model_reads_is_answered_with_what_was_left_out():
    torch.manual_seed(0)
    tokenizer = WordPieceTokenizer(max_pieces=8)
    encoder = Encoder(
        create_model("probe", vocab_size=len(tokenizer), img_dim=6, embed_size=8), tokenizer, None
    )
    query = "a red seven next to a blue two on a white page with a small green cat"
    warnings = encoder.check_query(query)
    assert warnings == [
        "the query is longer than the model reads; left out: 'on a white page with a small "
        "green cat'"
    ]
    assert encoder.check_query("a red seven") == []


@pytest.mark.subprocess
def test_caption_search_of_an_index_without_captions_says_so(served):
    address, _, _ = served
    status, answer, _ = request(address, "GET", "/api/search?text=a%20cat&modality=text")
    assert status == 400 and answer == {
        "error": "this index holds no captions: search modality=image"
    }
    status, answer, _ = request(address, "GET", "/api/search?text=a%20cat&modality=sound")
    assert status == 422 and "modality" in answer["error"]
    status, info, _ = request(address, "GET", "/api/info")
    assert info["captions"] is False and info["caption_count"] == 0


def test_a_port_out_of_range_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--index", "x", "--port", "70000"])
    assert stopped.value.code == 2
    assert "--port: must be a port number from 1 to 65535; got '70000'" in capsys.readouterr().err


def test_two_thousand_requests_from_16_clients_with_large_uploads(served):
    """The bounded load test: 2,000 requests, 10% of them uploads of a 2400 x 1800 photo."""
    address, pid, _ = served
    photo = io.BytesIO()
    rng = np.random.default_rng(1)
    smooth = rng.integers(0, 255, (18, 24, 3), dtype=np.uint8)
    Image.fromarray(smooth).resize((2400, 1800), Image.Resampling.BICUBIC).save(photo, "JPEG")
    words = ["a", "red", "blue", "seven", "two", "cat", "coffee", "astronaut", "next", "to"]

    def one(i: int) -> tuple[int, float]:
        started = time.perf_counter()
        if i % 10 == 0:
            status = upload(address, None, k=10, data=photo.getvalue(), name="photo.jpg")[0]
        else:
            text = "%20".join(words[(i + j) % len(words)] for j in range(4))
            status = request(address, "GET", f"/api/search?text={text}&k=10")[0]
        return status, time.perf_counter() - started

    def run(count: int) -> list[tuple[int, float]]:
        """``count`` requests from 16 clients at once: (status, seconds) of each."""
        results: list[tuple[int, float]] = []
        lock, numbers = threading.Lock(), iter(range(count))

        def client():
            for i in numbers:  # next() on a shared range iterator is atomic under the GIL
                outcome = one(i)
                with lock:
                    results.append(outcome)

        clients = [threading.Thread(target=client) for _ in range(16)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        return results

    # a first round makes the server's worker threads and their buffers, once
    assert {status for status, _ in run(160)} == {200}
    before = resident_mb(pid)
    results = run(2000)
    after = resident_mb(pid)
    latencies = sorted(seconds for _, seconds in results)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(0.99 * len(latencies))]
    print(f"load: {len(results)} requests, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"memory {before:.0f} -> {after:.0f} MB")  # fmt: skip
    assert len(results) == 2000 and {status for status, _ in results} == {200}
    assert after <= 1.2 * before, (before, after)


def test_a_file_replaced_by_a_huge_one_is_refused_before_it_is_read(served, photos):
    address, pid, out = served
    name = next(n for n in ImageIndex(out).files if n.startswith("a/"))
    path, row = photos / name, row_of(out, name)
    original, stat = path.read_bytes(), path.stat()
    before = resident_mb(pid)
    path.unlink()
    with open(path, "wb") as sparse:  # 3 GiB that take no disk space
        sparse.truncate(3 * 2**30)
    try:
        for endpoint in ("image", "thumb"):
            status, answer, _ = request(address, "GET", f"/{endpoint}/{row}")
            assert status == 410 and "changed since it was indexed" in answer["error"]
        assert resident_mb(pid) < before + 100  # nothing of it was read
    finally:
        path.unlink()
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert request(address, "GET", f"/image/{row}")[:2] == (200, original)


def test_a_thumbnail_is_sent_only_while_its_file_is_as_indexed(served, photos):
    address, _, out = served
    name = [n for n in ImageIndex(out).files if n.startswith("b/")][-1]
    path, row = photos / name, row_of(out, name)
    original, stat = path.read_bytes(), path.stat()
    assert request(address, "GET", f"/thumb/{row}")[0] == 200  # now kept by the server
    path.unlink()
    status, answer, _ = request(address, "GET", f"/thumb/{row}")
    assert status == 404 and "cannot be read any more" in answer["error"]
    path.write_bytes(original)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert request(address, "GET", f"/thumb/{row}")[0] == 200


def _gif_header(width: int, height: int) -> bytes:
    """A tiny GIF whose header claims ``width`` x ``height`` pixels."""
    out = io.BytesIO()
    Image.new("P", (4, 4)).save(out, "GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _png_with_a_broken_chunk() -> bytes:
    """A PNG whose second IDAT chunk has a type that is not letters (Pillow: SyntaxError)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (256, 256), bytes(range(256)) * 768).save(out, "PNG", compress_level=0)
    data = bytearray(out.getvalue())
    second = data.find(b"IDAT", data.find(b"IDAT") + 4)
    data[second : second + 4] = b"\x00\x01\x02\x03"
    return bytes(data)


def test_damaged_and_vast_uploads_and_odd_hosts_get_4xx(served):
    address = served[0]
    status, answer, _ = upload(address, None, data=_png_with_a_broken_chunk())
    assert status == 400 and answer["error"].startswith("not an image"), answer
    status, answer, _ = upload(address, None, data=_gif_header(20000, 20000), name="x.gif")
    assert status == 413 and "more pixels than Pillow decodes" in answer["error"], answer
    for text in ("%EF%B8%8F", "%CD%8F", "%E3%85%A4", "%E2%A0%80%E2%A0%80"):  # invisible only
        status, answer, _ = request(address, "GET", f"/api/search?text={text}")
        assert status == 400 and "no readable character" in answer["error"], text
    for host in ("127.0.0.1:evil.com", "[::1]evil.com", "localhost:80:80"):
        status, answer, _ = request(address, "GET", "/api/info", headers={"Host": host})
        assert status == 400, host


def test_stalled_uploads_are_dropped_and_their_number_is_bounded(served):
    address, pid, _ = served
    before = resident_mb(pid)
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    )
    stalled = []
    for _ in range(10):  # 8 are received at once (--max-uploads' default), then they stall
        connection = socket.create_connection(address)
        connection.sendall(head + b"x" * 1_000_000)
        stalled.append(connection)
    answers = []
    for connection in stalled:
        connection.settimeout(30)
        answers.append(connection.recv(200))
        connection.close()
    codes = sorted(answer.split()[1] for answer in answers)
    assert codes == [b"408"] * 8 + [b"503"] * 2, answers
    assert resident_mb(pid) < before + 50


def test_a_files_type_comes_from_its_suffix_not_from_a_name_like_a_data_url(served, photos):
    address, _, index = served
    for name in ("data:image/svg+xml,x.png", "data:text/html,y.png"):
        status, data, kind = request(address, "GET", f"/image/{row_of(index, name)}")
        assert status == 200 and kind == "image/png" and data == (photos / name).read_bytes()
