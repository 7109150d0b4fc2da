"""A split's duplicates: identical caption texts, identical image files, similar captions; the
trainer's false negatives and the duplicate-aware evaluation on them."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.data.duplicates import (
    SplitDuplicates,
    equal_keys,
    normalise_caption,
    similar_groups,
    split_duplicates,
)
from selhn.data.precomp import open_split
from selhn.data.synth import SynthConfig, generate
from selhn.evaluation import evaluate
from selhn.evaluation.evaluate import encode_split
from selhn.evaluation.extended import extended_metrics
from selhn.models.sentence import SentenceEncoder
from selhn.training.run_dir import read_log


@dataclass
class FakeSplit:
    """What ``split_duplicates`` reads of a split."""

    captions: list[str]
    caption_images: np.ndarray
    files: list[str] | None = None
    stored: list[np.ndarray] = field(default_factory=list)
    captions_path: Path = Path("/nonexistent/train_caps.txt")

    @property
    def num_images(self) -> int:
        return int(self.caption_images.max()) + 1

    def caption_to_image(self) -> np.ndarray:
        return self.caption_images

    def image_files(self) -> list[str] | None:
        return self.files

    def image(self, index: int) -> np.ndarray:
        return self.stored[index]


CAPTIONS = [
    "A dog runs.",  # image 0
    "a brown dog on grass",  # image 0
    "A  DOG RUNS",  # image 1: caption 0's words
    "two cats",  # image 2
    "a dog runs!",  # image 3: caption 0's words again
    "Two cats",  # image 3: caption 3's
]
IMAGES = np.array([0, 0, 1, 2, 3, 3])


def test_normalised_captions_ignore_case_spacing_and_punctuation():
    assert normalise_caption("A  DOG, runs.\n") == "a dog runs"
    assert normalise_caption("\uff34\uff57\uff4f cats") == "two cats"  # full-width (NFKC)
    assert normalise_caption("a dog runs") != normalise_caption("a dog ran")
    assert equal_keys(["x", "y", "x", "z", "y"]).tolist() == [0, 1, 0, 2, 1]


def naive_describes(captions, images, image_same):
    """caption q describes image i: an image identical to i (i itself included) is q's own
    image or has a caption with q's words."""
    words = [normalise_caption(c) for c in captions]
    n = len(image_same)
    out = np.zeros((n, len(captions)), dtype=bool)
    for i in range(n):
        for q in range(len(captions)):
            for j in range(n):
                if not image_same[i][j]:
                    continue
                own = images[q] == j
                same_words = any(words[c] == words[q] for c in np.flatnonzero(images == j))
                out[i, q] |= bool(own or same_words)
    return out


def test_identical_files_and_caption_texts_describe_each_others_images(tmp_path: Path):
    files = []
    for i, content in enumerate([b"red", b"blue", b"red", b"green"]):  # image 2 is image 0
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(content)
    split = FakeSplit(CAPTIONS, IMAGES, [str(f) for f in files])
    found = split_duplicates(split, "same_caption")
    same_image = [[bool(i == j or {i, j} == {0, 2}) for j in range(4)] for i in range(4)]
    expected = naive_describes(CAPTIONS, IMAGES, same_image)
    assert found.describes(IMAGES).numpy().tolist() == expected.tolist()
    assert found.image_keys[0] == found.image_keys[2] != found.image_keys[1]
    extra = int(expected.sum()) - len(CAPTIONS)
    counts = found.counts(IMAGES)
    assert counts["extra_pairs"] == extra
    assert counts["captions_per_image"] == pytest.approx(expected.sum(1).mean())
    # captions 0, 2, 4 (same words, images 0, 1, 3), 3 and 5 (images 2, 3), and caption 1 (of
    # image 0, the same file as image 2) describe another image
    assert counts["captions_with_extra_images"] == 6
    assert found.summary(IMAGES) == (
        "6 of 6 captions also describe another image; 2 of 4 images recur (compared by image files)"
    )


def test_without_the_files_the_stored_inputs_say_which_images_are_the_same():
    stored = [np.full((2, 3), v, dtype=np.float32) for v in (1.0, 2.0, 1.0, 3.0)]
    missing = FakeSplit(CAPTIONS, IMAGES, ["/nonexistent/a.png"] * 4, stored)
    found = split_duplicates(missing, "same_caption")
    assert found.image_keys.tolist() == [0, 1, 0, 2]
    assert "(compared by stored image input)" in found.summary(IMAGES)


def test_listed_names_are_read_relative_to_the_data_directory(tmp_path: Path):
    for name, content in (("a.png", b"1"), ("b.png", b"2"), ("c.png", b"1"), ("d.png", b"3")):
        (tmp_path / name).write_bytes(content)
    split = FakeSplit(CAPTIONS, IMAGES, ["a.png", "b.png", "c.png", "d.png"],
                      captions_path=tmp_path / "test_caps.txt")  # fmt: skip
    found = split_duplicates(split, "same_caption")
    assert found.image_keys.tolist() == [0, 1, 0, 2]
    assert "(compared by image files)" in found.summary(IMAGES)


def test_an_identical_image_shares_the_captions_of_its_copy():
    """Image 2 is image 1's file; image 1 has a caption with image 0's words: that caption of
    image 0 describes image 2 too."""
    captions, owners = ["a dog", "a dog", "a cat"], np.array([0, 1, 2])
    keys = SplitDuplicates.of(np.array([0, 1, 1]), equal_keys(captions), owners)
    same = [[True, False, False], [False, True, True], [False, True, True]]
    assert keys.describes(owners).tolist() == naive_describes(captions, owners, same).tolist()
    assert keys.describes(owners)[2, 0]


def test_similar_captions_join_by_chains_of_close_embeddings():
    # rows 0-1 and 1-2 are close (cosine 0.98), 0-2 is not (0.92); row 3 is far from all
    angles = torch.tensor([0.0, 0.2, 0.4, 1.5])
    vectors = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor(
        [[1.0], [3.0], [0.5], [2.0]]
    )
    assert similar_groups(vectors, threshold=0.97).tolist() == [0, 0, 0, 1]
    assert similar_groups(vectors, threshold=0.99).tolist() == [0, 1, 2, 3]
    assert similar_groups(vectors, threshold=0.97, elements=4).tolist() == [0, 0, 0, 1]  # 1 row


def test_similar_needs_sentence_embeddings_and_groups_distinct_texts():
    split = FakeSplit(CAPTIONS, IMAGES, None, [np.array([float(i)]) for i in range(4)])
    with pytest.raises(ValueError, match="needs frozen sentence embeddings"):
        split_duplicates(split, "similar")
    seen = []

    def embed(texts):  # "a brown dog on grass" lies close to "a dog runs"
        seen.extend(texts)
        table = {"a dog runs": [1.0, 0.0], "a brown dog on grass": [0.99, 0.14],
                 "two cats": [0.0, 1.0]}  # fmt: skip
        return torch.tensor([table[t] for t in texts])

    found = split_duplicates(split, "similar", embed, threshold=0.95)
    assert seen == ["a dog runs", "a brown dog on grass", "two cats"]  # each text once
    assert found.caption_keys.tolist() == [0, 0, 0, 1, 0, 1]
    strict = split_duplicates(split, "similar", embed, threshold=0.999)
    assert (
        strict.caption_keys.tolist() == equal_keys(normalise_caption(c) for c in CAPTIONS).tolist()
    )


def test_the_caption_table_pads_images_with_fewer_captions():
    keys = SplitDuplicates.of(np.arange(3), np.array([5, 6, 7, 8]), np.array([2, 0, 2, 2]))
    assert keys.image_captions.tolist() == [[6, -1, -1], [-1, -1, -1], [5, 7, 8]]


@pytest.mark.training
def test_training_with_false_negatives_and_a_duplicate_aware_eval(tmp_path, capsys, monkeypatch):
    data, run = tmp_path / "data", tmp_path / "run"
    generate(data, SynthConfig(train=40, dev=10, test=10, regions=8, feature_dim=8, seed=1))
    test_caps = data / "test_caps.txt"
    lines = test_caps.read_text().splitlines()
    lines[5] = lines[0].upper() + "!"  # image 1's first caption: image 0's first, other case
    test_caps.write_text("\n".join(lines) + "\n")
    tiny = ["--model.embed_size=16", "--model.word_dim=8", "--model.mlp_hidden=8",
            "--train.batch_size=16", "--epochs", "1", "--no-progress"]  # fmt: skip
    argv = ["train", "--data", str(data), "--out", str(run), "--loss", "selnce"]
    assert main([*argv, "--false-negatives", "same_caption", *tiny]) == 0
    printed = capsys.readouterr().out
    train_split = open_split(data, "train")
    keys = split_duplicates(train_split, "same_caption")
    assert f"false negatives (same_caption): {keys.summary(train_split.caption_images)}" in printed
    steps = read_log(run)[0]
    assert {"vanishing_i2t", "temperature"} <= steps[0].keys()

    report = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(data),
                 "--json", str(report)]) == 0  # fmt: skip
    found = json.loads(report.read_text())
    split = open_split(data, "test")
    owners = split.caption_images
    words = [normalise_caption(c) for c in split.captions]
    features = np.load(data / "test_ims.npy")
    positives = np.zeros((split.num_images, len(owners)), dtype=bool)
    for i in range(split.num_images):
        for q, owner in enumerate(owners):
            same_image = np.array_equal(features[i], features[owner])
            same_words = any(words[c] == words[q] for c in np.flatnonzero(owners == i))
            positives[i, q] = same_image or same_words
    assert found["duplicate_aware"]["extra_pairs"] == int(positives.sum()) - len(owners) >= 2
    model, vocab, _ = load_model(run / "best")
    img, txt = encode_split(model, split, vocab)
    want = extended_metrics(img, txt, torch.from_numpy(positives))
    assert {k: found["duplicate_aware"][k] for k in want} == pytest.approx(want)
    assert found["duplicate_aware"]["rsum"] >= found["metrics"]["rsum"]
    assert "duplicate-aware (" in capsys.readouterr().out
    monkeypatch.setattr(evaluate, "DUPLICATE_AWARE_LIMIT", split.num_images * len(owners) - 1)
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(data),
                 "--json", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["duplicate_aware"] is None
    assert "duplicate-aware metrics left out: 10 x 50 pairs" in capsys.readouterr().out


def test_similar_with_the_packaged_sentence_model_joins_paraphrases_only():
    text = SentenceEncoder(None, 8)
    text.load_pretrained()
    captions = ["a dog runs on the grass", "A dog running on grass.", "two cats sleep on a sofa",
                "a dog runs on the grass"]  # fmt: skip
    split = FakeSplit(
        captions, np.array([0, 1, 2, 3]), None, [np.array([float(i)]) for i in range(4)]
    )
    unit = F.normalize(text.embed_texts([normalise_caption(c) for c in captions]), dim=1)
    close = float(unit[0] @ unit[1])
    far = float(unit[0] @ unit[2])
    assert far < close < 0.999  # the paraphrase is closer than the other caption, not identical
    threshold = (close + far) / 2
    found = split_duplicates(split, "similar", text.embed_texts, threshold)
    assert found.caption_keys.tolist() == [0, 0, 1, 0]
    strict = split_duplicates(split, "similar", text.embed_texts, (close + 1) / 2)
    assert strict.caption_keys.tolist() == [0, 1, 2, 0]  # identical words alone
