"""The backbone's last stage learning on stored trunk activations: the cut, the stored files, the
split that reads them, the defaults that choose it, and a model trained and used from the CLI."""

import shutil

import numpy as np
import pytest
import torch

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.config.resolve import resolve
from selhn.data.augment import Augmentation
from selhn.data.facts import DataFacts
from selhn.data.image_files import load_image
from selhn.data.inputs import TrunkActivations
from selhn.data.manifest import read_manifest
from selhn.data.precomp import open_split
from selhn.features import FeatureJob, extract_features
from selhn.inference.encoder import Encoder
from selhn.models import create_model
from selhn.models.backbones import build_backbone, grid_shape
from selhn.models.stage import LastStage, finish_stage, stage_shapes, trunk_activations
from selhn.training.run_dir import read_log

SIZE = 64  # trunk 4 x 4, grid 2 x 2: fast on the CPU
SHAPE, CELLS = (112, 4, 4), 4


def test_the_trunk_and_the_last_stage_make_the_backbones_grid(backbone):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        grid = backbone(images)
        trunk = trunk_activations(backbone, images)
        staged = LastStage(backbone).eval()(trunk)
    assert trunk.shape == (2, 112, 6, 6)
    assert torch.equal(finish_stage(backbone, trunk), grid)  # the same operations
    # the stage's own copy of the weights, in the channels-last format
    assert (staged - grid).abs().max() <= 1e-5 * grid.abs().max()
    for size in (64, 100, 224):
        shape, cells = stage_shapes("efficientnet-lite0", size)
        with torch.no_grad():
            trunk = trunk_activations(backbone, torch.zeros(1, 3, size, size))
        assert shape == trunk.shape[1:] and cells == grid_shape(backbone, size)[0]


def test_features_store_the_trunk_and_the_flipped_training_images(samples, backbone, features):
    records = read_manifest(samples)
    first_train = next(r for r in records if r.split == "train")
    pixels = load_image(first_train.image, SIZE)[None]
    stored = np.load(features / "train_trunk.npy", mmap_mode="r")
    flipped = np.load(features / "train_trunk_flipped.npy", mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == (54, *SHAPE)
    expected = trunk_activations(backbone, pixels)[0]
    expected_flipped = trunk_activations(backbone, pixels.flip(3))[0]
    # float16 storage, computed in a batch of 16: equal up to that precision
    near = {"rtol": 2e-3, "atol": 2e-3}
    torch.testing.assert_close(torch.from_numpy(stored[0].astype(np.float32)), expected, **near)
    torch.testing.assert_close(
        torch.from_numpy(flipped[0].astype(np.float32)), expected_flipped, **near
    )
    assert (expected - expected_flipped).abs().max() > 1.0
    assert np.load(features / "test_trunk.npy").shape == (12, *SHAPE)
    assert not (features / "test_trunk_flipped.npy").exists()
    assert not list(features.glob(".*"))  # nothing partial left behind


@pytest.mark.training
def test_features_of_an_older_selhn_get_their_trunk_on_a_rerun(samples, backbone, features,
                                                               tmp_path):  # fmt: skip
    shutil.copytree(features, tmp_path, dirs_exist_ok=True)
    for path in tmp_path.glob("*_trunk*.npy"):
        path.unlink()
    job = FeatureJob(image_size=SIZE)
    report = extract_features(read_manifest(samples), tmp_path, job, 16, progress=False,
                              backbone=backbone)  # fmt: skip
    assert report["computed"] == 78
    for name in ("train_trunk.npy", "train_trunk_flipped.npy", "dev_trunk.npy", "test_ims.npy"):
        assert np.array_equal(np.load(tmp_path / name), np.load(features / name))


def test_the_split_reads_flipped_images_and_drops_cells_as_drawn(features):
    split = TrunkActivations("efficientnet-lite0", SHAPE, CELLS).open(features, "train")
    trunk = np.load(features / "train_trunk.npy")
    flipped = np.load(features / "train_trunk_flipped.npy")
    augmentation = Augmentation(region_drop=0.5)
    seen = set()
    for seed in range(8):
        activations, keep = split.training_image(3, augmentation, np.random.default_rng(seed))
        draws = np.random.default_rng(seed)
        flip = draws.random() < 0.5
        kept = augmentation.regions(np.arange(CELLS), draws)
        assert np.array_equal(activations.numpy(), (flipped if flip else trunk)[3])
        assert keep.nonzero().flatten().tolist() == kept.tolist()
        seen.add(flip)
    assert seen == {True, False}
    activations, keep = split.training_image(3, augmentation, None)
    assert np.array_equal(activations.numpy(), trunk[3]) and keep.all()
    batch, kept = split.collate_training_images([split.training_image(i, None, None)
                                                 for i in (0, 1)])  # fmt: skip
    assert batch.shape == (2, *SHAPE) and kept.shape == (2, CELLS)


def test_missing_or_misshapen_trunk_files_are_named(features, tmp_path):
    for name in ("dev_caps.txt", "dev_caps_img.txt"):
        shutil.copy(features / name, tmp_path / name)
    reads = TrunkActivations("efficientnet-lite0", SHAPE, CELLS)
    with pytest.raises(FileNotFoundError, match=r"dev_trunk.npy: trunk activations not found"):
        reads.open(tmp_path, "dev")
    np.save(tmp_path / "dev_trunk.npy", np.zeros((12, 112, 7, 7), np.float16))
    expected = r"expected float16 activations \(images, 112, 4, 4\), found float16 \(12, 112, 7, 7"
    with pytest.raises(ValueError, match=rf"dev_trunk.npy: {expected}"):
        reads.open(tmp_path, "dev")
    np.save(tmp_path / "dev_trunk.npy", np.zeros((11, *SHAPE), np.float16))
    with pytest.raises(ValueError, match=r"dev_caps_img.txt"):
        reads.open(tmp_path, "dev")


def test_the_own_data_recipe_learns_the_stage_where_the_trunk_is_stored(features, tmp_path):
    resolved = resolve(DataFacts.read(features))
    config, lines = resolved.config, resolved.choices
    assert config.model.backbone_stage == "efficientnet-lite0" and config.model.image_size == SIZE
    assert config.model.text_encoder == "sentence" and config.loss.name == "infonce"
    assert lines[0].startswith(f"recipe own-data, as {features} holds efficientnet-lite0")
    assert lines[1] == f"model.image_size={SIZE}, as {features}'s features were made at {SIZE} px"
    assert config.model.class_prior == 0.5
    for name in ("features.json", "train_caps.txt", "train_ims.npy"):
        shutil.copy(features / name, tmp_path / name)
    older = resolve(DataFacts.read(tmp_path))  # features of an older selhn: no trunk
    assert older.config.model.backbone_stage is None and older.config.model.text_encoder == "bigru"
    assert "holds no trunk activations" in older.choices[0]
    paper = resolve(DataFacts.read(features), recipe="paper")
    assert paper.config.model.backbone_stage is None and paper.config.model.text_encoder == "bigru"


def test_the_stage_learns_at_its_own_rate_beside_a_frozen_sentence_model():
    model = create_model(
        "rvsepp", vocab_size=30522, backbone_stage="efficientnet-lite0", text_encoder="sentence",
        embed_size=16, mlp_hidden=8,
    )  # fmt: skip
    groups = model.param_groups(0.1, 0.01, 2.0)
    stage = {id(p) for p in model.image_encoder.backbone.parameters()}
    frozen = {id(p) for p in model.text_encoder.transformer.parameters()}
    assert {id(p) for p in groups[1]["params"]} == stage and groups[1]["lr_scale"] == 2.0
    assert not frozen & {id(p) for g in groups for p in g["params"]}
    assert model.reads() == TrunkActivations("efficientnet-lite0", (112, 14, 14), 49)
    assert not model.augments_text
    with pytest.raises(ValueError, match="backbone and backbone_stage exclude each other"):
        create_model(
            "rvsepp",
            vocab_size=10,
            backbone_stage="efficientnet-lite0",
            backbone="efficientnet-lite0",
        )


@pytest.mark.training
def test_a_stage_model_trains_evaluates_and_encodes_new_images_as_its_data(
    samples, features, tmp_path, capsys
):
    run = tmp_path / "run"
    tiny = ["--model.embed_size=400", "--train.batch_size=32", "--train.log_every=1"]
    tiny += ["--epochs", "2", "--no-progress"]
    assert main(["train", "--data", str(features), "--out", str(run), *tiny]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("recipe own-data, as ")
    assert "loaded the last stage of the pretrained efficientnet-lite0 backbone" in printed
    assert "names (the class prior)" in printed
    assert (run / "config.yaml").read_text().count("class_prior: 0.5") == 1
    assert {r["epoch"]: r["backbone"] for r in read_log(run)[0]} == {1: "frozen", 2: "learning"}
    model, _, meta = load_model(run / "best")
    assert model.settings.backbone_stage == "efficientnet-lite0"
    assert meta["image_features"]["image_size"] == SIZE
    pretrained = LastStage(build_backbone()).state_dict()
    learnt = model.image_encoder.backbone.state_dict()
    assert all(torch.equal(learnt[k], v) for k, v in pretrained.items() if "running" in k)
    assert not torch.equal(learnt["head.0.weight"], pretrained["head.0.weight"])
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(features)]) == 0
    assert "test split, 12 images" in capsys.readouterr().out

    encoder = Encoder.load(run / "best")
    test = open_split(features, "test")
    from_files = encoder.encode_image_files(test.image_files())
    stored = torch.from_numpy(np.load(features / "test_trunk.npy"))
    with torch.no_grad():
        from_data = model.eval().encode_images(stored)
    # the same activations rounded to float16, computed in batches of other sizes
    torch.testing.assert_close(from_files, from_data, atol=2e-5, rtol=0)
