"""Encoding from files; indexes of image collections: shards, resume, torchrun, faiss."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from selhn.checkpoint import load_model, save_model
from selhn.cli import main
from selhn.data.manifest import read_manifest
from selhn.data.vocab import Vocabulary
from selhn.encoder import Encoder
from selhn.features import FeatureJob
from selhn.index import ann
from selhn.index.build import IndexJob, build_index, write_index
from selhn.index.collection import from_folder, from_manifest
from selhn.index.store import ImageIndex
from selhn.models import RVSEPP
from selhn.retrieval import encode_split, split_for

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
    model = RVSEPP(**settings).eval()
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
    assert index.files == [str(f) for f in sorted(files)] and report["images"] == 78
    skipped = [json.loads(line) for line in (tmp_path / "idx" / "skipped.jsonl").open()]
    assert {s["file"] for s in skipped} == {
        str(folder / "odd/broken.png"),
        str(folder / "notes.txt"),
    }
    assert "cannot identify image file" in skipped[0]["error"]
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
    assert index.files == [str(tmp_path / line["image"]) for i, line in enumerate(lines) if i != 2]
    assert index.captions == [line.get("captions", []) for i, line in enumerate(lines) if i != 2]
    (skipped,) = [json.loads(line) for line in (out / "skipped.jsonl").open()]
    assert skipped["file"].endswith("gone.png") and "No such file" in skipped["error"]
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


def test_two_gloo_processes_build_the_same_index_as_one(features_model, folder, tmp_path):
    one = _index_command(1, features_model[1], folder, tmp_path / "one")
    two = _index_command(2, features_model[1], folder, tmp_path / "two")
    assert one.count("wrote") == two.count("wrote") == 1  # rank 0 reports for all
    assert "78 images indexed (79 files read now" in two  # broken.png read too
    for name in ("files.txt", "skipped.jsonl"):
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
    files = [f"/data/{i}.jpg" for i in range(3000)]
    job = IndexJob(exact_limit=1000)
    model = {"checkpoint": None, "architecture": "none", "embed_size": 32, "weights_sha256": None}
    (tmp_path / "idx").mkdir()
    parts = [vectors[:1700].astype(np.float16), vectors[1700:].astype(np.float16)]
    meta = write_index(tmp_path / "idx", parts, files, None, [], model, job)
    spec = meta["faiss"]
    assert spec["kind"] == "ivf" and spec["nlist"] == 64  # the power of 2 nearest sqrt(3000)
    assert spec["calibration_recall_at_10"] >= ann.RECALL_TARGET
    index = ImageIndex(tmp_path / "idx")
    assert index.faiss.nprobe == spec["nprobe"] < 64
    found = np.array([[h.row for h in q] for q in index.search(torch.from_numpy(queries), 10)])
    stored = np.concatenate(parts).astype(np.float32)
    truth = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    assert ann.recall_at(found, truth, 10) >= 0.9  # fresh queries, not the calibration's


def test_a_folder_follows_links_once_and_keeps_dangling_ones_to_report(tmp_path):
    root, other = tmp_path / "photos", tmp_path / "elsewhere"
    (root / "trip").mkdir(parents=True)
    other.mkdir()
    for path in (root / "a.png", root / "trip" / "b.JPG", other / "c.png"):
        path.write_bytes(b"pixels")
    (root / "linked").symlink_to(other)  # a linked folder is walked
    (root / "trip" / "loop").symlink_to(root)  # a link back is not walked twice
    (root / "gone.png").symlink_to(tmp_path / "missing.png")  # dangling: listed, then reported
    (root / ".hidden.png").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "d.png").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    collection = from_folder(root)
    names = [str(p.relative_to(root.absolute())) for p in collection.files]
    assert names == ["a.png", "gone.png", "linked/c.png", "trip/b.JPG"]
    assert collection.ignored == [(str(root.absolute() / "notes.txt"), "not an image file name")]
    (root / "two\nlines.png").write_bytes(b"x")
    (root / b"latin-\xe9.png".decode("utf-8", "surrogateescape")).write_bytes(b"x")
    ignored = dict(from_folder(root).ignored)
    assert ignored[str(root.absolute() / "two\\nlines.png")] == "the file name holds a line break"
    assert ignored[str(root.absolute() / "latin-\\udce9.png")] == "the file name is not UTF-8"


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
    import selhn.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(selhn.cli, "_cmd_index", interrupted)
    command = ["index", "--checkpoint", "ck", "--images", str(tmp_path), "--out", "x"]
    assert main(command) == 130
    assert "interrupted. The images done are kept: the same command continues" in (
        capsys.readouterr().err
    )
