"""``selhn serve`` as users meet it: a real server on loopback, its JSON API, and its page in
headless Chromium (Debian's chromium and chromium-driver, which ``make test`` installs)."""

import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import LOGS, request, running_server, upload

from selhn.cli import build_parser, main
from selhn.inference.encoder import Encoder
from selhn.inference.index.store import ImageIndex

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def index(samples, features_model, tmp_path_factory):
    """An index of the sample images (with their captions) by the small features model."""
    out = tmp_path_factory.mktemp("serve") / "index"
    command = ["index", "--checkpoint", str(features_model[1]), "--manifest", str(samples)]
    assert main([*command, "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def served(index):
    """``selhn serve`` in a subprocess: ((host, port), pid); uploads above 20 KB are refused."""
    with running_server(index, "--max-upload-mb", str(20 / 1024)) as started:
        yield started


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def stored_embeddings(index) -> np.ndarray:
    return np.concatenate(
        [np.load(p).astype(np.float32) for p in sorted((index / "shards").glob("shard-*.npy"))]
    )


@pytest.mark.subprocess
def test_text_search_returns_the_models_ranking_with_captions(server, index, features_model):
    status, answer, _ = request(server, "GET", "/api/search?text=a%20red%20seven&k=5")
    assert status == 200 and answer["warnings"] == []
    query = Encoder.load(features_model[1]).encode_texts(["a red seven"]).numpy()[0]
    scores = stored_embeddings(index) @ query
    best = np.argsort(-scores, kind="stable")[:5]
    files = ImageIndex(index).files
    assert [h["image"] for h in answer["hits"]] == [files[i] for i in best]
    np.testing.assert_allclose([h["score"] for h in answer["hits"]], scores[best], atol=1e-5)
    captions = [json.loads(line) for line in (index / "captions.jsonl").open()]
    assert answer["hits"][0]["captions"] == captions[best[0]]


def caption_table(index, features_model):
    """(caption, image row) of every caption of the index, and their embeddings."""
    lines = [json.loads(line) for line in (index / "captions.jsonl").open()]
    pairs = [(text, row) for row, texts in enumerate(lines) for text in texts]
    embedded = Encoder.load(features_model[1]).encode_texts([t for t, _ in pairs]).numpy()
    return pairs, embedded


@pytest.mark.subprocess
def test_caption_search_ranks_the_indexs_captions(server, index, features_model):
    pairs, embedded = caption_table(index, features_model)
    query = Encoder.load(features_model[1]).encode_texts(["a red seven"]).numpy()[0]
    scores = embedded @ query
    best = np.argsort(-scores, kind="stable")[:5]
    status, answer, _ = request(server, "GET", "/api/search?text=a%20red%20seven&k=5&modality=text")
    assert status == 200 and answer["modality"] == "text"
    assert [(h["caption"], h["row"]) for h in answer["hits"]] == [pairs[i] for i in best]
    np.testing.assert_allclose([h["score"] for h in answer["hits"]], scores[best], atol=1e-5)
    files = ImageIndex(index).files
    assert answer["hits"][0]["image"] == files[pairs[best[0]][1]]
    opened = ImageIndex(index)  # an image's captions come first for its own upload
    row = next(r for r, f in enumerate(opened.files) if "digits" in f)
    status, answer, _ = upload(server, opened.root / opened.files[row], extra="&modality=text")
    image = stored_embeddings(index)[row]
    assert status == 200
    assert answer["hits"][0]["caption"] == pairs[int(np.argmax(embedded @ image))][0]


@pytest.mark.subprocess
def test_a_query_by_embedding_is_normalised_and_checked(server, index):
    stored = stored_embeddings(index)
    body = json.dumps({"embedding": (3 * stored[7]).tolist(), "k": 3}).encode()
    headers = {"Content-Type": "application/json"}
    status, answer, _ = request(server, "POST", "/api/search/vector", body, headers)
    assert status == 200 and answer["hits"][0]["row"] == 7
    assert answer["hits"][0]["score"] == pytest.approx(float(stored[7] @ stored[7]), abs=1e-3)
    for embedding, message in (([1.0, 2.0], "embedding must hold"),
                               ([0.0] * stored.shape[1], "not all zero")):  # fmt: skip
        body = json.dumps({"embedding": embedding}).encode()
        status, answer, _ = request(server, "POST", "/api/search/vector", body, headers)
        assert status == 400 and message in answer["error"]


@pytest.mark.subprocess
def test_health_the_api_description_and_the_access_log(served):
    server, pid = served
    assert request(server, "GET", "/health")[:2] == (200, {"status": "ok", "images": 78})
    status, described, _ = request(server, "GET", "/openapi.json")
    assert status == 200
    assert {"/api/search", "/api/search/vector", "/health"} <= set(described["paths"])
    status, page, _ = request(server, "GET", "/docs")
    assert status == 200 and b"/openapi.json" in page
    request(server, "GET", "/api/search?text=a%20logged%20query&k=1")
    deadline = time.monotonic() + 10
    while not any("GET /api/search?text=a%20logged%20query" in line for line in LOGS[pid]):
        assert time.monotonic() < deadline, "".join(LOGS[pid])
        time.sleep(0.1)


@pytest.mark.subprocess
def test_k_defaults_to_20_results(server):
    status, answer, _ = request(server, "GET", "/api/search?text=a%20red%20seven")
    assert status == 200 and answer["k"] == 20 and len(answer["hits"]) == 20


@pytest.mark.subprocess
def test_query_words_the_model_does_not_know_are_named(server):
    status, answer, _ = request(server, "GET", "/api/search?text=a%20red%20zebra%20qwxz&k=3")
    assert status == 200 and len(answer["hits"]) == 3
    assert answer["warnings"] == ["words the model does not know: zebra, qwxz"]


@pytest.mark.subprocess
def test_an_uploaded_image_finds_itself_first(server, index):
    opened = ImageIndex(index)
    digits = next(f for f in opened.files if "digits" in f)
    status, answer, _ = upload(server, opened.root / digits)
    assert status == 200 and answer["upload"] == Path(digits).name
    assert answer["hits"][0]["image"] == digits and answer["hits"][0]["score"] > 0.999


@pytest.mark.subprocess
def test_bad_requests_get_a_json_error(server, tmp_path):
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big)  # about 49 KB: over the 20 KB limit
    vast = io.BytesIO()
    Image.new("1", (8000, 6000)).save(vast, "PNG")  # 6 KB, 48 million pixels
    cases = [
        (request(server, "GET", "/api/search?text=&k=3"), 400, "query is empty"),
        (request(server, "GET", "/api/search?text=%20%20&k=3"), 400, "query is empty"),
        (request(server, "GET", "/api/search?text=cat&k=0"), 400, "k must be in [1, 78]"),
        (request(server, "GET", "/api/search?text=cat&k=79"), 400, "k must be in [1, 78]"),
        (request(server, "GET", "/api/search?text=cat&k=ten"), 422, "k: Input should be"),
        (request(server, "GET", "/api/search?text=" + "a" * 1001), 400, "at most 1000"),
        (upload(server, None, data=b"GIF89a not really"), 400, "not an image"),
        (upload(server, None, data=b""), 400, "empty"),
        (upload(server, big), 413, "larger than 0.0195312 MiB"),
        (request(server, "POST", "/api/search?k=3", b""), 422, "file: Field required"),
        (upload(server, None, data=vast.getvalue()), 413, "8000 x 6000 pixels; at most 40,000,000"),
        (request(server, "GET", "/api/search?text=%00%E2%80%8B%EF%BF%BD"), 400, "no readable"),
    ]
    for (status, answer, kind), expected, words in cases:
        assert (status, kind) == (expected, "application/json"), answer
        assert words in answer["error"], answer


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "path",
    [
        "/thumb/../../../../etc/passwd",
        "/image/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/image/%2Fetc%2Fpasswd",
        "/thumb/-1",
        "/image/78",
        "/etc/passwd",
        "/index.json",
        "/files.txt",
        "/shards/shard-00000.npy",
        "/static/../../etc/passwd",
    ],
)
def test_no_request_reads_a_file_outside_the_index(server, path):
    status, answer, kind = request(server, "GET", path)
    assert status in (404, 422) and kind == "application/json"
    assert "root:" not in json.dumps(answer)


@pytest.mark.subprocess
def test_thumbnails_and_images_are_the_indexed_files(server, index):
    opened = ImageIndex(index)
    first = opened.root / opened.files[0]
    status, data, kind = request(server, "GET", "/thumb/0")
    assert status == 200 and kind == "image/jpeg"
    with Image.open(io.BytesIO(data)) as thumb, Image.open(first) as original:
        assert max(thumb.size) <= 256
        assert thumb.size[0] / thumb.size[1] == pytest.approx(
            original.width / original.height, 0.02
        )
    status, data, kind = request(server, "GET", "/image/0")
    assert status == 200 and data == first.read_bytes() and kind == "image/png"


def test_serve_binds_to_loopback_unless_told():
    args = build_parser().parse_args(["serve", "--index", "x"])
    assert args.host == "127.0.0.1"


@pytest.mark.subprocess
@pytest.mark.browser
def test_the_page_searches_by_text_and_by_upload_in_chromium(
    server, index, features_model, tmp_path
):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "install Debian's chromium and chromium-driver (make test does, as root)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    files = ImageIndex(index).files
    query = "a blue four next to a blue one"
    embedded = Encoder.load(features_model[1]).encode_texts([query]).numpy()[0]
    expected = files[int(np.argmax(stored_embeddings(index) @ embedded))]
    try:
        browser.get(f"http://{server[0]}:{server[1]}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "78 images" in b.find_element(By.ID, "info").text)
        browser.find_element(By.ID, "query").send_keys(query)
        browser.find_element(By.ID, "search").click()
        wait.until(lambda b: "results for" in b.find_element(By.ID, "status").text)
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
        assert len(cards) == 20 and cards[0].get_attribute("data-file") == expected
        wait.until(lambda b: b.execute_script(
            "return [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
        ))  # fmt: skip
        target = next(f for f in files if "digits" in f and f != expected)
        browser.find_element(By.ID, "upload").send_keys(str(ImageIndex(index).root / target))
        wait.until(lambda b: Path(target).name in b.find_element(By.ID, "status").text)
        first = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[0]
        assert first.get_attribute("data-file") == target
        assert first.find_element(By.CSS_SELECTOR, ".score").text == "1.000"
        pairs, captions = caption_table(index, features_model)
        browser.find_element(By.ID, "captions").click()  # shown: this index has captions
        browser.find_element(By.ID, "search").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results .hit[data-caption]"))
        best = pairs[int(np.argmax(captions @ embedded))]
        first = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[0]
        assert (first.get_attribute("data-caption"), first.get_attribute("data-row")) == (
            best[0],
            str(best[1]),
        )
        browser.find_element(By.ID, "query").clear()
        browser.find_element(By.ID, "search").click()
        wait.until(lambda b: "query is empty" in b.find_element(By.ID, "status").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#results .hit") == []
    finally:
        browser.quit()


def test_serve_refuses_a_busy_port_and_a_moved_model_clearly(index, tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        assert main(["serve", "--index", str(index), "--port", port, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err
    moved = tmp_path / "moved"
    shutil.copytree(index, moved)
    meta = json.loads((moved / "index.json").read_text())
    meta["model"]["checkpoint"] = str(tmp_path / "gone")
    (moved / "index.json").write_text(json.dumps(meta))
    assert main(["serve", "--index", str(moved)]) == 2
    assert "is no longer there; give its new place with --checkpoint" in capsys.readouterr().err
