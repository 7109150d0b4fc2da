import hashlib

import numpy as np
import pytest

from selhn.data.precomp import open_split
from selhn.data.synth import COLOURS, SHAPES, SynthConfig, generate, make_scenes
from selhn.data.vocab import tokenize

SMALL = SynthConfig(train=60, dev=20, test=20, seed=3)


def digest(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_generation_is_deterministic(tmp_path):
    generate(tmp_path / "a", SMALL)
    generate(tmp_path / "b", SMALL)
    generate(tmp_path / "c", SynthConfig(train=60, dev=20, test=20, seed=4))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["train_ims.npy"] != digest(tmp_path / "c")["train_ims.npy"]


def test_splits_load_with_the_precomp_loader(tmp_path):
    generate(tmp_path, SMALL)
    for name, n in (("train", 60), ("dev", 20), ("test", 20)):
        split = open_split(tmp_path, name)
        assert split.features.shape == (n, SMALL.regions, SMALL.feature_dim)
        assert split.caption_to_image().tolist() == [j // 5 for j in range(len(split.captions))]
        assert (np.asarray(split.features) >= 0).all()


@pytest.mark.training
def test_default_size_fits_the_budget(tmp_path):
    report = generate(tmp_path, SynthConfig())
    assert open_split(tmp_path, "train").num_images == 10_000
    assert open_split(tmp_path, "dev").num_images == 1_000
    assert open_split(tmp_path, "test").num_images == 1_000
    assert report["bytes"] < 500e6


def pooled(features):
    flat = features.mean(axis=1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_near_duplicates_exist_and_look_alike(tmp_path):
    _scenes, source = make_scenes(3000, 1 / 3, np.random.default_rng(0))
    assert 0.3 < (source >= 0).mean() < 0.37
    generate(tmp_path, SynthConfig(train=400, dev=10, test=10))
    features = pooled(np.asarray(open_split(tmp_path, "train").features))
    _, source = make_scenes(400, 1 / 3, np.random.default_rng((0, 0)))
    dup = np.flatnonzero(source >= 0)
    dup_sim = (features[dup] * features[source[dup]]).sum(axis=1)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 400, 2000), rng.integers(0, 400, 2000)
    random_sim = (features[a] * features[b]).sum(axis=1)
    assert np.median(dup_sim) > np.quantile(random_sim, 0.95)


def test_binding_matters_colour_swaps_keep_the_bag_of_words():
    scenes, source = make_scenes(3000, 1 / 3, np.random.default_rng(0))
    swaps = 0
    for i in np.flatnonzero(source >= 0):
        j = source[i]
        same_words = sorted(scenes.colour[i]) == sorted(scenes.colour[j]) and sorted(
            scenes.shape[i]
        ) == sorted(scenes.shape[j])
        pairs_i = sorted(zip(scenes.shape[i], scenes.colour[i], strict=True))
        pairs_j = sorted(zip(scenes.shape[j], scenes.colour[j], strict=True))
        swaps += same_words and pairs_i != pairs_j
    assert swaps > 100  # scenes with the same words whose shape-colour binding differs


def test_captions_use_synonyms_and_relations(tmp_path):
    generate(tmp_path, SMALL)
    words = {w for c in open_split(tmp_path, "train").captions for w in tokenize(c)}
    assert {"cube", "block", "box"} & words and len({"red", "crimson"} & words) >= 1
    assert {"left", "right", "above", "below"} & words
    assert len(words & {s for v in SHAPES.values() for s in v}) > 8
    assert len(words & {c for v in COLOURS.values() for c in v}) > 8


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match=r"--regions must be >= 8, got 4"):
        SynthConfig(regions=4)
    with pytest.raises(ValueError, match=r"at least 1 image"):
        SynthConfig(dev=0)
