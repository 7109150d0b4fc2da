import os

import pytest
import torch

from selhn.cli import main
from selhn.data.manifest import read_manifest
from selhn.data.samples import write_samples
from selhn.features import FeatureJob, extract_features
from selhn.models.backbones import build_backbone


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    """manifest.jsonl of 14 photos + 40 train, 12 dev and 12 test digit-pair images."""
    return write_samples(tmp_path_factory.mktemp("samples"), train=40, dev=12, test=12)


FEATURE_SIZE = 64  # pixels: 2 x 2 grid cells, fast on the CPU


@pytest.fixture(scope="session")
def backbone():
    """The pretrained EfficientNet-Lite0 backbone."""
    return build_backbone()


@pytest.fixture(scope="session")
def features(samples, backbone, tmp_path_factory):
    """selhn features of the samples at 64 px (the grid and the trunk activations)."""
    out = tmp_path_factory.mktemp("features")
    extract_features(read_manifest(samples), out, FeatureJob(image_size=FEATURE_SIZE), 16,
                     progress=False, backbone=backbone)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def features_model(samples, tmp_path_factory):
    """(features directory, checkpoint) of a small model trained one epoch on selhn features of
    the samples at 64 px: the defaults (no recipe) on their grid, not the backbone's last stage
    (BiGRU text encoder, 32-d embeddings)."""
    root = tmp_path_factory.mktemp("features_model")
    features, run = root / "features", root / "run"
    command = ["features", "--manifest", str(samples), "--out", str(features)]
    assert main([*command, "--image-size", str(FEATURE_SIZE), "--no-progress"]) == 0
    train = ["train", "--data", str(features), "--out", str(run), "--epochs", "1", "--no-progress"]
    tiny = ["--recipe", "none", "--model.embed_size=32", "--model.word_dim=16"]
    assert main([*train, *tiny, "--train.batch_size=32"]) == 0
    return features, run / "best"


SLOW_KINDS = ("wheel", "browser", "distributed", "subprocess", "training")


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(items):
    """A test of a slow kind is slow: ``make check`` (``-m "not slow"``) leaves it out."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), each worker computes on one thread,
    so the two together use the two cores without oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
