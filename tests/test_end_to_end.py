"""Training end to end from image files: the grid image encoder, image splits and their
augmentation, the frozen-then-learning backbone, checkpoints and the command line."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.config.schema import Config, load_config
from selhn.data.augment import Augmentation, random_crop
from selhn.data.datasets import PairDataset
from selhn.data.image_files import load_image, open_image_split, write_image_splits
from selhn.data.manifest import read_manifest
from selhn.data.vocab import Vocabulary
from selhn.evaluation.evaluate import encode_split, split_for
from selhn.evaluation.metrics import embedding_metrics
from selhn.models import RVSEPP, create_model
from selhn.models.backbones import build_backbone
from selhn.training.run_dir import read_log
from selhn.training.trainer import train

SIZE = 64  # 2 x 2 grid cells
TINY = {
    "model.backbone": "efficientnet-lite0",
    "model.image_size": SIZE,
    "model.embed_size": 32,
    "model.word_dim": 16,
    "model.mlp_hidden": 16,
    "train.batch_size": 16,
    "train.eval_batch_size": 32,
    "train.lr": 1e-3,
    "train.log_every": 1,
    "train.warmup_steps": 0,  # a constant learning rate: no schedule to follow
    "train.lr_decay_epoch": 100,
    "train.patience": 0,
}


@pytest.fixture(scope="module")
def image_data(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    write_image_splits(read_manifest(samples), out)
    return out


def tiny_model(**sizes) -> RVSEPP:
    torch.manual_seed(0)
    return create_model("rvsepp",
        vocab_size=30, img_dim=None, embed_size=16, word_dim=8, mlp_hidden=8,
        backbone="efficientnet-lite0", image_size=SIZE, **sizes,
    )  # fmt: skip


def test_the_grid_encoder_pools_the_kept_cells_of_the_backbones_grid():
    model = tiny_model().eval()
    model.image_encoder.backbone.load_pretrained()
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        got = model.encode_images(images, keep)
        grid = build_backbone()(images).flatten(2).transpose(1, 2)  # an independent backbone
        cells = model.image_encoder.cell_encoder
        for b in range(3):  # one image at a time, only its kept cells
            kept = grid[b][keep[b]][None]
            expected = cells(kept, torch.tensor([kept.shape[1]]))[0]
            torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            model.encode_images(images), model.encode_images(images, keep[2:].expand(3, 4))
        )
    with pytest.raises(ValueError, match=r"cell_mask must be \(images, cells\) = \(3, 4\)"):
        model.encode_images(images, keep[:, :3])


@pytest.mark.training
def test_the_backbone_keeps_its_batch_statistics_and_learns_only_when_allowed():
    model = tiny_model()
    model.train()
    encoder = model.image_encoder
    assert not encoder.backbone.training and encoder.cell_encoder.training
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    model.encode_images(images).sum().backward()
    assert all(p.grad is None for p in encoder.backbone.parameters())  # frozen by default
    encoder.set_backbone_trainable(True)
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    model.encode_images(images).sum().backward()
    assert all(p.grad is not None for p in encoder.backbone.parameters())
    after = encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics too


def test_the_backbone_trains_at_its_own_learning_rate_scale():
    config = load_config(None, TINY)
    model = create_model(replace(config.model, vocab_size=30, img_dim=None))
    assert model.settings.img_dim == 1280
    groups = model.param_groups(0.1, config.train.backbone_lr_scale, 2.0)
    backbone = {id(p) for p in model.image_encoder.backbone.parameters()}
    assert {id(p) for p in groups[1]["params"]} == backbone and groups[1]["lr_scale"] == 0.01
    assert len(groups[0]["params"]) + len(backbone) == len(list(model.parameters()))
    assert not backbone & {id(p) for p in groups[0]["params"]}


def test_backbone_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"model\.backbone must be None, efficientnet-lite0 or"):
        load_config(None, {"model.backbone": "resnet50"})
    with pytest.raises(ValueError, match=r"model\.backbone_weights must be None without"):
        load_config(None, {"model.backbone_weights": "w.pt"})
    with pytest.raises(ValueError, match=r"data\.crop_scale must be in"):
        load_config(None, {"data.crop_scale": 0})
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  backbone: efficientnet-lite0\n")
    with pytest.raises(
        ValueError, match=r"model\.backbone does not apply to model\.architecture=vsepp"
    ):
        load_config(path, {"model.architecture": "vsepp"})
    with pytest.raises(ValueError, match="has 1280 channels, not 2048"):
        create_model("rvsepp", vocab_size=30, img_dim=2048, backbone="efficientnet-lite0")
    assert create_model(replace(Config().model, vocab_size=30)).settings.backbone is None


def test_an_image_split_lists_its_files_and_reports_bad_ones(samples, image_data, tmp_path):
    records = [r for r in read_manifest(samples) if r.split == "dev"]
    split = open_image_split(image_data, "val", SIZE)
    assert split.name == "dev" and split.files == [r.image.absolute() for r in records]
    assert split.captions == [c for r in records for c in r.captions]
    with Image.open(records[3].image) as image:
        expected = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert torch.equal(split.image(3), torch.tensor(expected).permute(2, 0, 1))

    for name in ("dev_caps.txt", "dev_caps_img.txt"):
        (tmp_path / name).write_text((image_data / name).read_text())
    with pytest.raises(FileNotFoundError, match=r"dev_images.txt: not found; .* selhn data images"):
        open_image_split(tmp_path, "dev", SIZE)
    (tmp_path / "pictures").mkdir()
    lines = []
    for number, record in enumerate(records):  # relative to the data directory this time
        (tmp_path / "pictures" / f"{number}.png").write_bytes(record.image.read_bytes())
        lines.append(f"pictures/{number}.png")
    (tmp_path / "dev_images.txt").write_text("\n".join(lines) + "\n")
    relative = open_image_split(tmp_path, "dev", SIZE)
    assert torch.equal(relative.image(3), split.image(3))
    lines[1] = "pictures/missing.png"
    (tmp_path / "dev_images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"dev_images.txt:2: image file 'pictures/missing"):
        open_image_split(tmp_path, "dev", SIZE)
    (tmp_path / "dev_images.txt").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"dev_caps_img.txt:\d+: expected an image index in"):
        open_image_split(tmp_path, "dev", SIZE)
    with pytest.raises(FileExistsError, match=r"train_caps.txt: .* holds data; use another --out"):
        write_image_splits(read_manifest(samples), image_data)


def test_crops_are_random_boxes_of_at_least_the_minimum_share():
    rng = np.random.default_rng(0)
    boxes = np.array([random_crop(0.6, rng) for _ in range(500)])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 1 + 1e-12).all()
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides >= 0.6).all() and sides.min() < 0.62 and sides.max() > 0.98
    assert np.allclose(random_crop(1.0, rng), (0.0, 0.0, 1.0, 1.0))


def test_a_crop_is_that_part_of_the_image(samples):
    path = samples.parent / "images" / "chelsea.png"
    with Image.open(path) as image:
        width, height = image.size
        box = (width // 4, 0, 3 * width // 4, height // 2)
        expected = np.asarray(image.convert("RGB").crop(box).resize((48, 48)))
    crop = (box[0] / width, 0.0, box[2] / width, 0.5)
    got = load_image(path, 48, crop=crop).permute(1, 2, 0).numpy().astype(float)
    assert np.abs(got - expected).mean() < 2.0  # the resampling filter reads past the box edge
    whole = load_image(path, 48).permute(1, 2, 0).numpy().astype(float)
    assert np.abs(whole - expected).mean() > 20.0


def test_training_pairs_are_augmented_reproducibly(image_data):
    split = open_image_split(image_data, "train", SIZE, cells=4)
    vocab = Vocabulary.build(split.captions)
    augmentation = Augmentation(region_drop=0.5, crop_scale=0.7)
    pairs = PairDataset(split, vocab, augmentation, seed=3)
    first = [pairs[i] for i in range(20)]
    again = [pairs[i] for i in range(20)]
    assert [owner for _, _, owner, _ in first] == split.caption_images[:20].tolist()
    assert [caption for *_, caption in first] == list(range(20))
    for ((image, keep), tokens, *_), ((image2, keep2), tokens2, *_) in zip(first, again,
                                                                          strict=True):  # fmt: skip
        assert torch.equal(image, image2) and tokens == tokens2 and torch.equal(keep, keep2)
        assert keep.any()
    assert any(not k.all() for (_, k), *_ in first)
    pairs.epoch = 1
    assert any(not torch.equal(pairs[i][0][0], first[i][0][0]) for i in range(20))
    plain = PairDataset(split, vocab, None, seed=3)
    (image, keep), tokens, owner, _ = plain[5]
    assert torch.equal(image, split.image(owner)) and keep.all()
    assert tokens == vocab.encode(split.captions[5]) and owner == split.caption_images[5]
    uncropped = PairDataset(split, vocab, Augmentation(), seed=3)  # the default
    assert all(torch.equal(uncropped[i][0][0], split.image(uncropped[i][2])) for i in range(5))


@pytest.mark.training
def test_training_from_images_freezes_then_trains_the_backbone_and_resumes_exactly(
    image_data, tmp_path
):
    run = tmp_path / "run"
    pretrained = build_backbone().state_dict()
    config = load_config(None, {**TINY, "train.epochs": 1})
    train(config, image_data, run, progress=False)
    model, _, _ = load_model(run / "last")
    state = model.image_encoder.backbone.state_dict()
    assert all(torch.equal(state[k], pretrained[k]) for k in pretrained)  # frozen in epoch 1
    steps = read_log(run)[0]
    assert {r["backbone"] for r in steps} == {"frozen"}

    config = load_config(run / "config.yaml", {"train.epochs": 2})
    train(config, image_data, run, resume=True, progress=False)
    model, vocab, meta = load_model(run / "last")
    state = model.image_encoder.backbone.state_dict()
    learned = [k for k in pretrained if not torch.equal(state[k], pretrained[k])]
    assert learned and all("running" not in k for k in learned)  # weights, not BN statistics
    steps = read_log(run)[0]
    assert [r["backbone"] for r in steps if r["epoch"] == 2] == ["learning"] * (len(steps) // 2)
    dev = split_for(model, image_data, "dev")  # the trainer's evaluation, from the checkpoint
    metrics = embedding_metrics(
        *encode_split(model, dev, vocab, 7), caption_to_image=dev.caption_images
    )
    assert metrics["rsum"] == pytest.approx(meta["dev_metrics"]["rsum"], abs=1e-6)

    train(config, image_data, tmp_path / "whole", progress=False)  # the same 2 epochs at once
    whole = load_model(tmp_path / "whole" / "last")[0].state_dict()
    assert all(torch.equal(x, whole[name]) for name, x in model.state_dict().items())
    assert read_log(tmp_path / "whole")[0] == steps


@pytest.mark.training
def test_images_to_training_to_eval_and_search_from_the_command_line(samples, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "images", "--manifest", str(samples), "--out", str(data)]) == 0
    assert "train 54, dev 12, test 12 images" in capsys.readouterr().out
    settings = [f"--{k}={v}" for k, v in TINY.items() if not k.startswith("model.backbone")]
    command = ["train", "--data", str(data), "--out", str(run), "--epochs", "1"]
    assert main([*command, "--backbone", "efficientnet-lite0", *settings, "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(data), "--split", "dev",
                 "--json", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert "dev split, 12 images" in capsys.readouterr().out
    reported = json.loads((tmp_path / "m.json").read_text())["metrics"]["rsum"]
    assert reported == pytest.approx(read_log(run)[1][0]["rsum"], abs=1e-6)
    query = ["search", "--checkpoint", str(run / "best"), "--data", str(data), "--k", "1"]
    assert main([*query, "--query", "a red seven", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    tests = [r for r in read_manifest(samples) if r.split == "test"]
    assert hit["file"] == str(tests[hit["image"]].image.absolute())
