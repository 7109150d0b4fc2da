"""Encoding from files; indexes of image collections: shards, resume, torchrun, faiss."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from selhn.checkpoint import load_model, save_model
from selhn.cli import main
from selhn.data.manifest import read_manifest
from selhn.data.vocab import Vocabulary
from selhn.evaluation.evaluate import encode_split, split_for
from selhn.features import FeatureJob
from selhn.inference.encoder import Encoder
from selhn.inference.index import ann
from selhn.inference.index.build import IndexJob, build_index, write_index
from selhn.inference.index.collection import from_folder, from_manifest
from selhn.inference.index.store import ImageIndex
from selhn.models import create_model
from selhn.utils.locks import FolderLock

SIZE = 64  # the features_model's image size


@pytest.fixture(scope="module")
def folder(samples, tmp_path_factory):
    """The 78 sample images in two sub-folders, plus a broken image and a text file."""
    root = tmp_path_factory.mktemp("collection")
    for number, record in enumerate(read_manifest(samples)):
        sub = root / ("odd" if number % 2 else "even")
        sub.mkdir(exist_ok=True)
        shutil.copy(record.image, sub / record.image.name)
    (root / "odd" / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_encoding_image_files_equals_the_embeddings_of_the_features(features_model):
    features, checkpoint = features_model
    encoder = Encoder.load(checkpoint)
    meta = json.loads((checkpoint / "config.json").read_text())
    assert meta["image_features"]["backbone"] == "efficientnet-lite0"
    assert meta["image_features"]["image_size"] == SIZE
    split = split_for(encoder.model, features, "test")
    from_features, captions = encode_split(encoder.model, split, encoder.vocab)
    from_files = encoder.encode_image_files(split.image_files(), batch_size=5)
    assert from_files.shape == from_features.shape == (12, 32)
    torch.testing.assert_close(from_files, from_features, atol=2e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_texts(split.captions), captions, atol=1e-6, rtol=0)


def test_a_model_with_a_backbone_encodes_files_as_its_evaluation_reads_them(samples, tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red seven", "a cat"])
    settings = dict(vocab_size=len(vocab), img_dim=None, embed_size=16, word_dim=8)
    settings |= dict(text_encoder="bigru", backbone="efficientnet-lite0", image_size=SIZE)
    model = create_model("rvsepp", **settings).eval()
    save_model(tmp_path / "model", model, vocab)
    assert main(["data", "images", "--manifest", str(samples), "--out", str(tmp_path / "d")]) == 0
    encoder = Encoder.load(tmp_path / "model")
    split = split_for(encoder.model, tmp_path / "d", "dev")
    expected, _ = encode_split(encoder.model, split, vocab)
    torch.testing.assert_close(encoder.encode_image_files(split.image_files()), expected)


def test_a_model_of_foreign_region_features_encodes_captions_only(features_model, tmp_path):
    features, checkpoint = features_model
    model, vocab, meta = load_model(checkpoint)
    save_model(tmp_path / "scan", model, vocab, {**meta, "image_features": None})
    encoder = Encoder.load(tmp_path / "scan")
    assert encoder.encode_texts(["a red seven"]).shape == (1, 32)
    files = (features / "test_images.txt").read_text().splitlines()[:3]
    with pytest.raises(ValueError, match=r"did not compute.*SCAN's precomp files"):
        encoder.encode_image_files(files)
    older = {k: v for k, v in meta.items() if k != "image_features"}  # as selhn 0.1.0 saved
    save_model(tmp_path / "old", model, vocab, older)
    older_encoder = Encoder.load(tmp_path / "old")  # captions still encode
    assert older_encoder.encode_texts(["a red seven"]).shape == (1, 32)
    with pytest.raises(ValueError, match="does not record how its image features were made"):
        older_encoder.encode_image_files(files)
    declared = Encoder.load(tmp_path / "old", image_features=FeatureJob(image_size=SIZE))
    expected = Encoder.load(checkpoint).encode_image_files(files)
    torch.testing.assert_close(declared.encode_image_files(files), expected)


def test_unknown_words_are_named(features_model):
    encoder = Encoder.load(features_model[1])
    assert encoder.unknown_words("a red zebra next to a qwxz") == ["zebra", "qwxz"]


def test_a_folder_index_holds_every_readable_image_and_reports_the_rest(
    features_model, folder, tmp_path
):
    encoder = Encoder.load(features_model[1])
    report = build_index(encoder, from_folder(folder), tmp_path / "idx", progress=False)
    files = sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")
    index = ImageIndex(tmp_path / "idx")
    names = [f.relative_to(folder).as_posix() for f in sorted(files)]
    assert index.files == names and report["images"] == 78
    skipped = [json.loads(line) for line in (tmp_path / "idx" / "skipped.jsonl").open()]
    assert {s["file"] for s in skipped} == {"odd/broken.png", "notes.txt"}
    assert skipped[0]["error"] == "not an image format Pillow reads"
    stored = np.load(tmp_path / "idx" / "shards" / "shard-00000.npy")
    assert stored.dtype == np.float16 and stored.shape == (78, 32)
    expected = encoder.encode_image_files(files).numpy()
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=1e-3)
    assert report["faiss"]["kind"] == "exact"
    hits = index.search(torch.from_numpy(expected[[5, 40]]), 3)
    assert [h[0].row for h in hits] == [5, 40]  # each image finds itself first
    brute = expected[[5, 40]] @ stored.astype(np.float32).T
    np.testing.assert_allclose([h.score for h in hits[1]], np.sort(brute[1])[::-1][:3], atol=1e-5)


def test_a_manifest_index_keeps_captions_and_lists_missing_files(samples, features_model, tmp_path):
    lines = [json.loads(line) for line in samples.read_text().splitlines()[:6]]
    lines[2] = {"image": "images/gone.png", "captions": ["nothing"]}
    del lines[3]["captions"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    shutil.copytree(samples.parent / "images", tmp_path / "images")
    out = tmp_path / "idx"
    assert main(["index", "--checkpoint", str(features_model[1]), "--manifest", str(manifest),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    index = ImageIndex(out)
    assert index.files == [line["image"] for i, line in enumerate(lines) if i != 2]
    assert index.captions == [line.get("captions", []) for i, line in enumerate(lines) if i != 2]
    (skipped,) = [json.loads(line) for line in (out / "skipped.jsonl").open()]
    assert skipped["file"] == "images/gone.png" and "No such file" in skipped["error"]
    manifest.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:2: image .* already listed at .*m.jsonl:1"):
        from_manifest(manifest)


class Interrupt(Exception):
    pass


def test_an_interrupted_index_resumes_without_encoding_anything_twice(
    features_model, folder, tmp_path
):
    encoder = Encoder.load(features_model[1])
    collection = from_folder(folder)
    job = IndexJob(shard_size=16, batch_size=4)
    encoded = []
    original = encoder.encode_pixels

    def counting(pixels, fail_at=None):
        if fail_at is not None and len(encoded) == fail_at:
            raise Interrupt
        encoded.append(len(pixels))
        return original(pixels)

    encoder.encode_pixels = lambda pixels: counting(pixels, fail_at=11)  # inside shard 2
    with pytest.raises(Interrupt):
        build_index(encoder, collection, tmp_path / "idx", job, progress=False)
    assert not (tmp_path / "idx" / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="is an unfinished index"):
        ImageIndex(tmp_path / "idx")
    encoder.encode_pixels = counting
    build_index(encoder, collection, tmp_path / "idx", job, progress=False)
    assert sum(encoded) == 78  # each readable image encoded once over both runs
    encoder.encode_pixels = original
    build_index(encoder, collection, tmp_path / "whole", job, progress=False)
    for shard in sorted((tmp_path / "whole" / "shards").glob("shard-*.npy")):
        resumed = np.load(tmp_path / "idx" / "shards" / shard.name)
        np.testing.assert_array_equal(resumed, np.load(shard))
    assert ImageIndex(tmp_path / "idx").files == ImageIndex(tmp_path / "whole").files
    with pytest.raises(FileExistsError, match=r"another job \(it differs in --shard-size\)"):
        build_index(encoder, collection, tmp_path / "idx", IndexJob(shard_size=8), progress=False)


def _index_command(processes, checkpoint, folder, out):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "selhn", "index", "--checkpoint"]
    command += [str(checkpoint), "--images", str(folder), "--out", str(out), "--shard-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.distributed
def test_two_gloo_processes_build_the_same_index_as_one(features_model, folder, tmp_path):
    one = _index_command(1, features_model[1], folder, tmp_path / "one")
    two = _index_command(2, features_model[1], folder, tmp_path / "two")
    assert one.count("wrote") == two.count("wrote") == 1  # rank 0 reports for all
    assert "78 images indexed (78 encoded now, 79 files read" in two  # broken.png read too
    for name in ("files.jsonl", "skipped.jsonl"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    shards = sorted((tmp_path / "one" / "shards").glob("shard-*.npy"))
    assert len(shards) == 10  # 79 image files in shards of 8, by turns
    for shard in shards:
        np.testing.assert_array_equal(np.load(shard), np.load(tmp_path / "two/shards" / shard.name))
    first, second = ImageIndex(tmp_path / "one"), ImageIndex(tmp_path / "two")
    queries = torch.from_numpy(np.load(shards[3]).astype(np.float32))
    assert [[h.row for h in q] for q in first.search(queries, 5)] == [
        [h.row for h in q] for q in second.search(queries, 5)
    ]


def clustered(count, dim, seed, centres=50):
    """Unit vectors around ``centres`` random directions, like embeddings of similar images."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim))
    x = centre[rng.integers(0, centres, count)] + 0.6 * rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_top_and_recall_against_a_sort():
    vectors = clustered(300, 8, 0)
    queries = clustered(7, 8, 1)
    top = ann.exact_top(queries, [vectors[:100], vectors[100:]], 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(top, expected)
    found = np.array([[1, 2, 3], [4, 5, 9]])
    truth = np.array([[1, 2, 4], [4, 5, 6]])
    assert ann.recall_at(found, truth, 2) == 1.0
    assert ann.recall_at(found, truth, 3) == pytest.approx(4 / 6)
    # leaving row 1 and row 4 out: [2, 4] vs [2, 3]; [5, 6] vs [5, 9]
    assert ann.recall_at(found, truth, 2, leave_out=np.array([1, 4])) == pytest.approx(2 / 4)


def test_above_the_exact_limit_a_calibrated_ivf_index_is_built(tmp_path):
    vectors, queries = np.split(clustered(3200, 32, 2), [3000])  # held-out queries
    files = [{"name": f"{i}.jpg", "target": f"{i}.jpg", "size": 1, "mtime_ns": 0, "sha256": ""}
             for i in range(3000)]  # fmt: skip
    job = IndexJob(exact_limit=1000)
    model = {"checkpoint": None, "architecture": "none", "embed_size": 32, "weights_sha256": None}
    (tmp_path / "idx").mkdir()
    parts = [vectors[:1700].astype(np.float16), vectors[1700:].astype(np.float16)]
    meta = write_index(tmp_path / "idx", parts, files, None, [], model, job, tmp_path)
    spec = meta["faiss"]
    assert spec["kind"] == "ivf" and spec["nlist"] == 64  # the power of 2 nearest sqrt(3000)
    assert spec["calibration_recall_at_10"] >= ann.RECALL_TARGET
    index = ImageIndex(tmp_path / "idx")
    assert index.faiss.nprobe == spec["nprobe"] < 64
    found = np.array([[h.row for h in q] for q in index.search(torch.from_numpy(queries), 10)])
    stored = np.concatenate(parts).astype(np.float32)
    truth = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    assert ann.recall_at(found, truth, 10) >= 0.9  # fresh queries, not the calibration's


def test_a_folder_is_walked_without_links_and_those_that_lead_out_are_reported(tmp_path):
    root, other = tmp_path / "photos", tmp_path / "elsewhere"
    (root / "trip").mkdir(parents=True)
    other.mkdir()
    for path in (root / "a.png", root / "trip" / "b.JPG", other / "c.png"):
        path.write_bytes(b"pixels")
    (root / "linked").symlink_to(other)  # a folder outside: reported, not walked
    (root / "inner").symlink_to(root / "trip")  # inside: its files are indexed where they lie
    (root / "trip" / "loop").symlink_to(root)  # a link back is not walked
    (root / "gone.png").symlink_to(root / "missing.png")  # dangling: listed, then reported
    (root / "away.png").symlink_to(other / "c.png")  # a file outside: reported, never read
    (root / ".hidden.png").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "d.png").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    collection = from_folder(root)
    assert collection.names == ["a.png", "gone.png", "trip/b.JPG"]
    assert collection.targets == ["a.png", "missing.png", "trip/b.JPG"]
    assert collection.ignored == [
        ("away.png", "it resolves outside the indexed folder photos"),
        ("linked", "a link to a folder outside it"),
        ("notes.txt", "not an image file name"),
    ]
    (root / "two\nlines.png").write_bytes(b"x")
    (root / b"latin-\xe9.png".decode("utf-8", "surrogateescape")).write_bytes(b"x")
    ignored = dict(from_folder(root).ignored)
    assert ignored["two\\nlines.png"] == "the file name holds a line break"
    assert ignored["latin-\\udce9.png"] == "the file name is not UTF-8"


def test_an_index_goes_into_a_new_or_empty_folder_only(features_model, folder, tmp_path):
    encoder = Encoder.load(features_model[1])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("not an index")
    with pytest.raises(FileExistsError, match="exists and is not an index"):
        build_index(encoder, from_folder(folder), tmp_path / "data", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep.txt"]
    with pytest.raises(FileNotFoundError, match="no such index directory"):
        ImageIndex(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"not an index directory \(no index.json\)"):
        ImageIndex(tmp_path / "data")


def test_an_interrupted_command_says_what_it_kept(monkeypatch, capsys, tmp_path):
    import selhn.cli.serving

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(selhn.cli.serving, "_index", interrupted)
    command = ["index", "--checkpoint", "ck", "--images", str(tmp_path), "--out", "x"]
    assert main(command) == 130
    assert "interrupted. The images done are kept: the same command continues" in (
        capsys.readouterr().err
    )


def test_special_and_truncated_files_are_reported_never_opened_or_indexed(
    features_model, folder, tmp_path
):
    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    os.mkfifo(root / "pipe.png")  # opening it would wait for a writer forever
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "socket.png"))
        first = sorted(root.rglob("*.png"))[0].read_bytes()
        (root / "cut.png").write_bytes(first[: len(first) // 2])
        photo = io.BytesIO()
        Image.new("RGB", (300, 200), "teal").save(photo, "JPEG")
        (root / "cut.jpg").write_bytes(photo.getvalue()[:-300])
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(
            json.dumps({"image": "pipe.png"}) + "\n" + json.dumps({"image": "cut.png"})
        )
        assert from_manifest(manifest, root).ignored == [
            ("pipe.png", "a named pipe, not a regular file")
        ]
        encoder = Encoder.load(features_model[1])
        report = {}

        def run():
            report.update(build_index(encoder, from_folder(root), tmp_path / "i", progress=False))

        build = threading.Thread(target=run)
        build.start()
        build.join(timeout=120)
        assert not build.is_alive(), "the index build hangs"
    lines = (tmp_path / "i/skipped.jsonl").read_text().splitlines()
    skipped = {s["file"]: s["error"] for s in map(json.loads, lines)}
    assert skipped["pipe.png"] == "a named pipe, not a regular file"
    assert skipped["socket.png"] == "a socket, not a regular file"
    assert skipped["cut.png"] == "image file is truncated"
    assert skipped["cut.jpg"].startswith("image file is truncated")
    assert report["images"] == 78 and report["encoded_now"] == 78


def test_a_rerun_encodes_only_new_and_changed_files_and_equals_a_fresh_build(
    features_model, folder, tmp_path
):
    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    encoder = Encoder.load(features_model[1])
    job = IndexJob(shard_size=16)
    first = build_index(encoder, from_folder(root), tmp_path / "idx", job, progress=False)
    assert first["encoded_now"] == 78
    for seed in (1, 2):  # two new photos
        pixels = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"new-{seed}.png")
    files = sorted(p for p in root.rglob("*.png") if p.name != "broken.png")
    files[0].unlink()  # a photo deleted
    changed = files[1]
    changed.write_bytes(files[5].read_bytes())  # a photo replaced by another's bytes
    os.utime(files[2], ns=(0, 10**18))  # a photo touched, its bytes the same
    files[3].rename(root / "renamed.png")  # a photo moved, its bytes the same
    encoded = []
    original = encoder.encode_pixels
    encoder.encode_pixels = lambda pixels: encoded.append(len(pixels)) or original(pixels)
    again = build_index(encoder, from_folder(root), tmp_path / "idx", job, progress=False)
    assert sum(encoded) == again["encoded_now"] == 2  # the new ones: the changed photo's bytes,
    # the touched and the moved photos were known by their hash (read, not decoded)
    assert again["images"] == 79 and again["read_now"] == 6  # and broken.png, read again
    encoder.encode_pixels = original
    build_index(encoder, from_folder(root), tmp_path / "fresh", job, progress=False)
    updated, fresh = ImageIndex(tmp_path / "idx"), ImageIndex(tmp_path / "fresh")
    assert updated.files == fresh.files and "renamed.png" in updated.files
    assert (tmp_path / "idx/files.jsonl").read_text() == (
        tmp_path / "fresh/files.jsonl"
    ).read_text()
    vectors = [index.faiss.reconstruct_n(0, len(index)) for index in (updated, fresh)]
    # equal but for the last bit of some float16 values: a batch of other images can change it
    np.testing.assert_allclose(*vectors, rtol=0, atol=1e-4)
    assert updated.read(updated.files.index("renamed.png")) == (root / "renamed.png").read_bytes()
    assert not (tmp_path / "idx/plan.json").exists()
    model, vocab, meta = load_model(features_model[1])
    other = tmp_path / "other"
    torch.manual_seed(1)
    for parameter in model.parameters():
        parameter.data += 0.01 * torch.randn_like(parameter)
    save_model(other, model, vocab, meta)
    with pytest.raises(FileExistsError, match=r"another job \(it differs in the model\)"):
        build_index(Encoder.load(other), from_folder(root), tmp_path / "idx", job, progress=False)


def test_one_index_build_at_a_time_and_older_indexes_are_named(features_model, folder, tmp_path):
    encoder = Encoder.load(features_model[1])
    held = FolderLock(tmp_path / "idx", "index build", "")
    held.acquire()
    with pytest.raises(FileExistsError, match=r"idx: another index build writes it \(process"):
        build_index(encoder, from_folder(folder), tmp_path / "idx", progress=False)
    held.release()
    build_index(encoder, from_folder(folder), tmp_path / "idx", progress=False)
    meta = json.loads((tmp_path / "idx/index.json").read_text())
    (tmp_path / "idx/index.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match=r"an index of an older selhn \(format 1\)"):
        ImageIndex(tmp_path / "idx")
    job = json.loads((tmp_path / "idx/job.json").read_text())
    del job["format"]
    (tmp_path / "idx/job.json").write_text(json.dumps(job))
    with pytest.raises(FileExistsError, match=r"differs in the index format"):
        build_index(encoder, from_folder(folder), tmp_path / "idx", progress=False)


def test_damaged_images_are_skipped_and_a_rewrite_in_place_is_encoded_again(
    features_model, folder, tmp_path
):
    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    out = io.BytesIO()
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(out, "PNG", compress_level=0)
    broken = bytearray(out.getvalue())
    second = broken.find(b"IDAT", broken.find(b"IDAT") + 4)
    if second < 0:  # one IDAT chunk: break the first one's type
        second = broken.find(b"IDAT")
    broken[second : second + 4] = b"\x00\x01\x02\x03"  # Pillow raises SyntaxError on it
    (root / "chunk.png").write_bytes(bytes(broken))
    encoder = Encoder.load(features_model[1])
    report = build_index(encoder, from_folder(root), tmp_path / "idx", progress=False)
    skipped = {s["file"] for s in map(json.loads, (tmp_path / "idx/skipped.jsonl").open())}
    assert "chunk.png" in skipped and report["images"] == 78  # the build went on
    # a photo rewritten in place with other bytes of the same size, its time put back (as
    # rsync -t or tar x do): its status change time tells it apart
    photo = root / "same-size.bmp"
    Image.new("RGB", (16, 16), "red").save(photo)
    build_index(encoder, from_folder(root), tmp_path / "idx", progress=False)
    stat = photo.stat()
    Image.new("RGB", (16, 16), "blue").save(photo)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = build_index(encoder, from_folder(root), tmp_path / "idx", progress=False)
    assert again["encoded_now"] == 1 and again["read_now"] == 3  # and the two damaged files
    index = ImageIndex(tmp_path / "idx")
    assert index.read(index.files.index("same-size.bmp")) == photo.read_bytes()


class Killed(Exception):
    pass


@pytest.mark.training
def test_an_update_cut_short_is_unfinished_then_finished_by_a_rerun(
    features_model, folder, tmp_path, monkeypatch
):
    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    encoder = Encoder.load(features_model[1])
    job = IndexJob(shard_size=16, batch_size=4)
    build_index(encoder, from_folder(root), tmp_path / "idx", job, progress=False)
    sorted(root.rglob("*.png"))[0].unlink()
    import selhn.inference.index.build as build_module

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(build_module.ann, "build", killed)  # dies while writing the index
    with pytest.raises(Killed):
        build_index(encoder, from_folder(root), tmp_path / "idx", job, progress=False)
    with pytest.raises(FileNotFoundError, match="is an unfinished index"):
        ImageIndex(tmp_path / "idx")
    monkeypatch.undo()
    # an interrupted build whose finished shard then holds a file that changed
    encoded, original = [], encoder.encode_pixels

    def counting(pixels):
        if len(encoded) == 6:
            raise Interrupt
        encoded.append(len(pixels))
        return original(pixels)

    encoder.encode_pixels = counting
    with pytest.raises(Interrupt):
        build_index(encoder, from_folder(root), tmp_path / "new", job, progress=False)
    first = sorted(root.rglob("*.png"))[0]  # encoded by the finished first shard
    first.write_bytes(sorted(folder.rglob("*.png"))[9].read_bytes())  # another photo's bytes
    encoder.encode_pixels = original
    build_index(encoder, from_folder(root), tmp_path / "idx", job, progress=False)
    build_index(encoder, from_folder(root), tmp_path / "new", job, progress=False)
    build_index(encoder, from_folder(root), tmp_path / "fresh", job, progress=False)
    rows = [ImageIndex(tmp_path / name) for name in ("idx", "new", "fresh")]
    assert rows[0].files == rows[1].files == rows[2].files and len(rows[2]) == 77
    vectors = [index.faiss.reconstruct_n(0, len(index)) for index in rows]
    np.testing.assert_allclose(vectors[1], vectors[2], rtol=0, atol=1e-4)
    np.testing.assert_allclose(vectors[0], vectors[2], rtol=0, atol=1e-4)


def test_names_never_spell_a_path_outside_the_root_and_links_are_indexed_once(tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), "red").save(root / "images" / name)
    (root / "up").symlink_to("/")
    (root / "images" / "same.png").symlink_to(root / "images" / "a.png")
    manifest = root / "m.jsonl"
    entries = [f"up{root}/images/b.png", str(root / "images" / "a.png")]
    manifest.write_text("".join(json.dumps({"image": e}) + "\n" for e in entries))
    listed = from_manifest(manifest)
    assert listed.names == listed.targets == ["images/b.png", "images/a.png"]
    folder = from_folder(root / "images")
    assert folder.names == ["a.png", "b.png"]
    assert ("same.png", "a link to a.png, indexed under that name") in folder.ignored
