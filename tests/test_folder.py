"""``selhn data folder``: a folder of images (sidecar captions, a caption table, none) to a
manifest with splits by a hash of each file's bytes; and the errors that point to it."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selhn.cli import main
from selhn.data.folder import SPLIT_SHARES, assign_splits, folder_manifest
from selhn.data.manifest import read_manifest


def png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def split_by_hand(path: Path) -> str:
    """The split rule written out: the first 16 hex digits of the SHA-256 as a share of 2^64,
    test below 0.18, dev below 0.30, else train."""
    place = int(hashlib.sha256(path.read_bytes()).hexdigest()[:16], 16) / 2**64
    return "test" if place < 0.18 else "dev" if place < 0.30 else "train"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(12):
        png(root / f"p{i:02d}.png", i).with_suffix(".txt").write_text(f"photo {i}\n\nnumber {i}\n")
    (root / "copy.png").write_bytes((root / "p03.png").read_bytes())  # p03's bytes again
    (root / "copy.txt").write_text("the same photo\n")
    png(root / "nocaption.png", 50)
    png(root / "trips" / "beach.png", 51)  # captioned by the table only
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.md").write_text("not an image")
    png(root / ".hidden.png", 52)
    (root / "captions.csv").write_text("image,caption\ntrips/beach.png,a beach\np01.png,more\n")
    return root


def test_a_folder_becomes_a_manifest_with_hashed_splits(photos: Path, tmp_path: Path):
    out = tmp_path / "manifest.jsonl"
    found = folder_manifest(photos, out, photos / "captions.csv")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(line["image"]).as_posix().removeprefix("photos/"): line for line in lines}
    assert sorted(by_name) == sorted(
        [f"p{i:02d}.png" for i in range(12)] + ["copy.png", "nocaption.png", "trips/beach.png"]
    )
    assert by_name["p05.png"]["captions"] == ["photo 5", "number 5"]
    assert by_name["p01.png"]["captions"] == ["photo 1", "number 1", "more"]
    assert by_name["trips/beach.png"]["captions"] == ["a beach"]
    assert by_name["nocaption.png"] == {"image": "photos/nocaption.png", "captions": []}
    assert found.index_only == 1
    assert found.skipped[0] == ("broken.png", "not an image format Pillow reads")
    assert [name for name, _ in found.skipped] == ["broken.png", "captions.csv", "notes.md"]
    captioned = {n: line for n, line in by_name.items() if line["captions"]}
    by_hand = {n: split_by_hand(photos / n) for n in captioned}
    moved = {n for n in captioned if captioned[n]["split"] != by_hand[n]}
    # the rule, except that an empty dev or test split takes the train file nearest it
    for split in ("dev", "test"):
        if split not in by_hand.values():
            assert len([n for n in moved if captioned[n]["split"] == split]) >= 1
    assert all(by_hand[n] == "train" for n in moved)
    assert {line["split"] for line in captioned.values()} == {"train", "dev", "test"}
    assert by_name["copy.png"]["split"] == by_name["p03.png"]["split"]  # identical bytes
    counts = {s: sum(line["split"] == s for line in captioned.values()) for s in SPLIT_SHARES}
    assert found.splits == {"train": len(captioned) - counts["dev"] - counts["test"], **counts}
    again = tmp_path / "again.jsonl"  # deterministic, and a new file does not move old ones
    png(photos / "zz.png", 60).with_suffix(".txt").write_text("new\n")
    folder_manifest(photos, again, photos / "captions.csv")
    newer = {json.loads(line)["image"]: json.loads(line) for line in again.read_text().splitlines()}
    assert all(newer[line["image"]] == line for line in lines)


def test_the_manifest_trains_and_indexes_where_each_reader_wants_it(photos: Path, tmp_path: Path):
    out = tmp_path / "m.jsonl"
    folder_manifest(photos, out)
    index_only: list[str] = []
    records = read_manifest(out, index_only=index_only)
    assert index_only == ["photos/nocaption.png", "photos/trips/beach.png"]
    assert len(records) == 13 and all(r.captions for r in records)
    with pytest.raises(ValueError, match=r"unknown split None.*selhn data folder DIR --out"):
        read_manifest(out)  # without index_only a line with no split is an error


def test_the_splits_rule_keeps_dev_and_test_with_three_files_or_more():
    digests = {f"f{i}": hashlib.sha256(bytes([i])).hexdigest() for i in range(3)}
    splits = assign_splits(digests)
    assert sorted(splits.values()) == ["dev", "test", "train"]
    two = assign_splits({"a": digests["f0"], "b": digests["f1"]})
    assert set(two.values()) <= {"train", "dev", "test"} and len(two) == 2


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("image,caption\nmissing.png,x\n", r"captions.csv:2: image 'missing.png' is not an image"),
        ("name,text\np01.png,x\n", r"expected a header with 'image' and 'caption' columns"),
        ("image,caption\np01.png,\n", r"captions.csv:2: expected non-empty caption text"),
    ],
)
def test_a_bad_caption_table_names_its_line(photos: Path, tmp_path: Path, table, message):
    (photos / "captions.csv").write_text(table)
    with pytest.raises(ValueError, match=message):
        folder_manifest(photos, tmp_path / "m.jsonl", photos / "captions.csv")


def test_the_command_prints_what_it_wrote_and_left_out(photos, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert main(["data", "folder", str(photos), "--out", str(out), "--captions",
                 str(photos / "captions.csv")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"wrote {out}: train " in printed and "1 without captions" in printed
    assert "left out broken.png: " in printed and "left out notes.md: not an image" in printed


def test_training_data_without_a_dev_split_is_refused_before_any_model(tmp_path: Path):
    from selhn.config.resolve import resolve
    from selhn.data.facts import DataFacts
    from selhn.data.synth import SynthConfig, generate
    from selhn.training.trainer import train

    data = tmp_path / "data"
    generate(data, SynthConfig(train=8, dev=4, test=4, regions=8, feature_dim=8))
    config = resolve(DataFacts.read(data)).config
    (data / "dev_caps.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no dev split \(dev_caps.txt not found\).*"
                       r"selhn data folder DIR --out MANIFEST"):  # fmt: skip
        train(config, data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    (data / "train_caps.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no train split"):
        DataFacts.read(data)
