import json
import os

import numpy as np
import pytest
import torch

from selhn.data.augment import Augmentation
from selhn.data.datasets import PairDataset
from selhn.data.precomp import open_split, write_split
from selhn.data.vocab import MASK, Vocabulary, tokenize


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_split(root, split="train", images=4, cpi=2, regions=3, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.random((images, regions, dim), dtype=np.float32)
    captions = [f"a red cube number {i}" for i in range(images * cpi)]
    write_split(root, split, features, captions)
    return features, captions


def test_tokenize_keeps_words_of_any_script_whole():
    assert tokenize("Un café à São Paulo!") == ["un", "café", "à", "são", "paulo", "!"]
    assert tokenize("Кошка на ковре.") == ["кошка", "на", "ковре", "."]
    assert tokenize("一只猫在垫子上。") == ["一", "只", "猫", "在", "垫", "子", "上", "。"]
    assert tokenize("Cafe\u0301") == tokenize("Caf\u00e9") == ["café"]  # decomposed = composed


def test_tokenize_is_unchanged_for_english():
    """ASCII text tokenises as the ASCII-only rule of earlier versions did (SCAN vocabularies)."""
    import re
    import string

    ascii_rule = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
    rng = np.random.default_rng(0)
    alphabet = list(string.ascii_letters + string.digits + string.punctuation + "   ")
    texts = ["".join(rng.choice(alphabet, size=40)) for _ in range(500)]
    texts += ["A man's dog, 2 cats & a bird_feeder (3D) -- it's 5 o'clock."]
    for text in texts:
        assert tokenize(text) == ascii_rule.findall(text.lower()), text


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("A Dog's toy, on the mat.") == [
        "a",
        "dog's",
        "toy",
        ",",
        "on",
        "the",
        "mat",
        ".",
    ]
    assert tokenize("  two   spaces ") == ["two", "spaces"]


def test_vocabulary_build_save_load(tmp_path):
    vocab = Vocabulary.build(["a red cube .", "a blue cube", "rare"], min_count=2)
    assert vocab.idx2word[:5] == ["<pad>", "<start>", "<end>", "<unk>", "<mask>"]
    assert set(vocab.idx2word[5:]) == {"a", "cube"}
    assert vocab.encode("A cube, red") == [1, vocab("a"), vocab("cube"), 3, 3, 2]
    vocab.save(tmp_path / "v.json")
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["idx"] == len(vocab) and data["idx2word"]["5"] == vocab.idx2word[5]
    assert Vocabulary.load(tmp_path / "v.json").word2idx == vocab.word2idx


def test_scan_vocabulary_loads_as_is_and_gains_mask(tmp_path):
    scan = {
        "word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4, "cat": 5},
        "idx2word": {
            "0": "<pad>",
            "1": "<start>",
            "2": "<end>",
            "3": "<unk>",
            "4": "dog",
            "5": "cat",
        },
        "idx": 6,
    }
    (tmp_path / "f30k_precomp_vocab.json").write_text(json.dumps(scan))
    vocab = Vocabulary.load(tmp_path / "f30k_precomp_vocab.json")
    assert vocab("dog") == 4 and vocab("cat") == 5 and vocab("zebra") == 3
    assert vocab(MASK) == 6 and len(vocab) == 7


def test_bad_vocabulary_files_are_named(tmp_path):
    path = tmp_path / "v.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"v.json: not a vocabulary JSON with a 'word2idx'"):
        Vocabulary.load(path)
    path.write_text(json.dumps({"word2idx": {"<pad>": 0, "dog": 2}}))
    with pytest.raises(ValueError, match=r"v.json: 'word2idx' ids must be 0..1 without gaps"):
        Vocabulary.load(path)
    path.write_text(json.dumps({"word2idx": {"<pad>": 0, "dog": 1}}))
    with pytest.raises(ValueError, match=r"v.json: a vocabulary needs the special tokens"):
        Vocabulary.load(path)


def test_precomp_round_trip_and_memory_map(tmp_path):
    features, captions = make_split(tmp_path, "test", images=3, cpi=5)
    split = open_split(tmp_path, "test")
    assert isinstance(split.features, np.memmap) and split.features.mode == "r"
    assert np.array_equal(split.features, features) and split.captions == captions
    assert split.num_images == 3 and split.feature_dim == 5
    assert split.caption_to_image().tolist() == [j // 5 for j in range(15)]
    assert np.array_equal(split.image(2), features[2])


def test_opening_flickr30k_sized_features_reads_no_data(tmp_path):
    shape = (29_000, 36, 2048)  # 8.6 GB, a sparse file here
    array = np.lib.format.open_memmap(tmp_path / "train_ims.npy", "w+", np.float32, shape)
    del array
    (tmp_path / "train_caps.txt").write_text("a dog\n" * (5 * shape[0]))
    before = rss_bytes()
    split = open_split(tmp_path, "train")
    assert split.features.shape == shape and len(split.caption_to_image()) == len(split.captions)
    assert rss_bytes() - before < 100 * 2**20
    assert split.image(28_999).shape == (36, 2048)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_dir", r"nowhere: data directory not found"),
        ("no_ims", r"train_ims.npy: feature file not found"),
        ("no_caps", r"train_caps.txt: caption file not found"),
        ("not_multiple", r"train_caps.txt: 7 caption lines are not a multiple of the 4 images"),
        ("float64", r"train_ims.npy: features must be float32, found float64"),
        ("rank2", r"train_ims.npy: features must be \(images, regions, channels\), found shape"),
        ("empty_caption", r"train_caps.txt:3: empty caption"),
        ("not_npy", r"train_ims.npy: not a .npy array"),
    ],
)
def test_bad_precomp_input_is_named(tmp_path, breakage, message):
    features, captions = make_split(tmp_path)
    root = tmp_path / "nowhere" if breakage == "no_dir" else tmp_path
    if breakage == "no_ims":
        (tmp_path / "train_ims.npy").unlink()
    elif breakage == "no_caps":
        (tmp_path / "train_caps.txt").unlink()
    elif breakage == "not_multiple":
        (tmp_path / "train_caps.txt").write_text("a cube\n" * 7)
    elif breakage == "float64":
        np.save(tmp_path / "train_ims.npy", features.astype(np.float64))
    elif breakage == "rank2":
        np.save(tmp_path / "train_ims.npy", features[:, 0])
    elif breakage == "empty_caption":
        captions[2] = "  "
        (tmp_path / "train_caps.txt").write_text("\n".join(captions) + "\n")
    elif breakage == "not_npy":
        (tmp_path / "train_ims.npy").write_bytes(b"not an array")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        open_split(root, "train")


def test_non_finite_feature_is_reported_when_read(tmp_path):
    features, captions = make_split(tmp_path)
    features[2, 1, 4] = np.nan
    write_split(tmp_path, "train", features, captions)
    split = open_split(tmp_path, "train")
    split.image(1)
    with pytest.raises(
        ValueError, match=r"train_ims.npy: image 2 has a non-finite feature at region 1, channel 4"
    ):
        split.image(2)


def test_pair_dataset_without_augmentation_is_exact(tmp_path):
    features, captions = make_split(tmp_path, images=4, cpi=2)
    split = open_split(tmp_path, "train")
    vocab = Vocabulary.build(captions)
    dataset = PairDataset(split, vocab)
    regions, tokens, image, caption = dataset[5]
    assert image == 2 and caption == 5 and np.array_equal(regions, features[2])
    assert tokens == vocab.encode(captions[5])
    batch = dataset.collate([dataset[0], dataset[5]])
    features, lengths = batch.image_input
    assert features.shape == (2, 3, 5) and lengths.tolist() == [3, 3]
    assert batch.image_ids.tolist() == [0, 2] and batch.caption_ids.tolist() == [0, 5]
    assert batch.tokens[1, : batch.token_lengths[1]].tolist() == tokens


def test_augmentation_rates_and_determinism():
    aug = Augmentation()
    vocab = Vocabulary.build([" ".join(f"w{i}" for i in range(50))])
    ids = [vocab(f"w{i}") for i in range(50)]
    rng = np.random.default_rng(0)
    kept_regions, lengths, masked = 0, 0, 0
    trials = 2000
    for _ in range(trials):
        kept_regions += len(aug.regions(np.zeros((36, 2)), rng))
        out = aug.tokens(ids, vocab, rng)
        lengths += len(out)
        masked += out.count(vocab(MASK))
    assert kept_regions / (36 * trials) == pytest.approx(0.8, abs=0.01)
    # 20% perturbed: 40% of those deleted (8% of tokens), 50% masked (10% of tokens)
    assert lengths / (50 * trials) == pytest.approx(0.92, abs=0.01)
    assert masked / (50 * trials) == pytest.approx(0.10, abs=0.01)
    assert len(aug.regions(np.zeros((1, 2)), np.random.default_rng(0))) == 1


def test_pair_dataset_augmentation_is_keyed_by_seed_epoch_and_index(tmp_path):
    make_split(tmp_path, images=4, cpi=2, regions=30)
    split = open_split(tmp_path, "train")
    vocab = Vocabulary.build(split.captions)
    dataset = PairDataset(split, vocab, Augmentation(), seed=1)
    first = [dataset[i][0].shape[0] for i in range(8)]
    assert first == [dataset[i][0].shape[0] for i in range(8)]
    dataset.epoch = 1
    assert first != [dataset[i][0].shape[0] for i in range(8)]
    assert torch.equal(dataset.collate([dataset[3]]).tokens, dataset.collate([dataset[3]]).tokens)


def test_one_row_per_image_keeps_each_image_once(tmp_path):
    features, captions = make_split(tmp_path, images=4, cpi=2)
    dataset = PairDataset(open_split(tmp_path, "train"), Vocabulary.build(captions))
    batch = dataset.collate([dataset[i] for i in (5, 0, 4, 1, 3)])  # images 2, 0, 2, 0, 1
    once = batch.one_row_per_image()
    assert once.caption_to_image.tolist() == [2, 0, 2, 0, 1]  # rows in order of image id
    assert np.array_equal(once.image_input[0].numpy(), features[[0, 1, 2]])
    for rows, every in zip(once.image_input, batch.image_input, strict=True):
        assert torch.equal(rows[once.caption_to_image], every)
    for name in ("tokens", "token_lengths", "image_ids"):
        assert torch.equal(getattr(once, name), getattr(batch, name))
