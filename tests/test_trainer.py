import json
import os
import stat

import pytest
import torch

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.config.resolve import layered
from selhn.config.schema import load_config
from selhn.data.precomp import open_split
from selhn.data.synth import SynthConfig, generate
from selhn.evaluation.evaluate import evaluate
from selhn.evaluation.metrics import embedding_metrics
from selhn.models import RVSEPP, create_model
from selhn.training.run_dir import read_log
from selhn.training.trainer import train

TINY = {
    "model.embed_size": 32,
    "model.word_dim": 16,
    "model.mlp_hidden": 16,
    "train.batch_size": 16,
    "train.lr": 2e-3,
    "train.log_every": 1,
    "train.warmup_steps": 0,  # a constant learning rate: the loop's tests need no schedule
    "train.lr_decay_epoch": 100,
    "train.patience": 0,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(train=64, dev=20, test=20, regions=8, feature_dim=16, seed=1))
    return root


@pytest.mark.training
def test_a_tiny_run_learns_and_keeps_its_checkpoints(data, tmp_path):
    config = load_config(None, {**TINY, "train.epochs": 4})
    result = train(config, data, tmp_path / "run", progress=False)

    _model, vocab, meta = load_model(tmp_path / "run" / "best")
    assert meta["epoch"] == result["best_epoch"] and meta["config"] == config.to_dict()
    torch.manual_seed(0)
    untrained = create_model(
        "rvsepp", vocab_size=len(vocab), img_dim=16, embed_size=32, word_dim=16, mlp_hidden=16
    )
    dev = open_split(data, "dev")
    before = evaluate(untrained, dev, vocab, 64, torch.device("cpu"))["rsum"]
    assert result["best_rsum"] > before + 50

    steps = read_log(tmp_path / "run")[0]
    assert len(steps) == 4 * 20  # 320 captions / 16 per batch, every step logged
    for key in ("loss", "grad_norm_image", "grad_norm_text", "lr", "vanishing_i2t", "gap_t2i"):
        assert all(isinstance(r[key], float) for r in steps), key
    evals = read_log(tmp_path / "run")[1]
    assert [r["epoch"] for r in evals] == [1, 2, 3, 4]  # numbered as the console numbers them
    assert max(r["rsum"] for r in evals) == result["best_rsum"]
    assert (tmp_path / "run" / "last").resolve().name == "epoch-004"
    kept = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    best = f"epoch-{result['best_epoch']:03d}"
    assert kept == {"epoch-004", best, "epoch-004.trainer_state.pt"}
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert f"| epochs | {result['best_epoch']} trained" in card
    assert f"rsum {result['best_rsum']}" in card


@pytest.mark.training
@pytest.mark.parametrize(
    "setup",
    [
        {},
        {"loss.name": "infonce", "model.architecture": "vsepp"},
        {"train.weight_average": 0.9},
    ],
    ids=["rvsepp-selhn", "vsepp-infonce", "weight-average"],
)
def test_resume_reproduces_the_uninterrupted_run(data, tmp_path, setup):
    vsepp = setup.get("model.architecture") == "vsepp"  # it has no mlp_hidden
    tiny = {k: v for k, v in TINY.items() if k != "model.mlp_hidden" or not vsepp}
    settings = {**tiny, **setup, "train.lr_decay_epoch": 2}
    whole = load_config(None, {**settings, "train.epochs": 3})
    train(whole, data, tmp_path / "whole", progress=False)
    part = load_config(None, {**settings, "train.epochs": 1})
    train(part, data, tmp_path / "part", progress=False)
    with open(tmp_path / "part" / "log.jsonl", "a") as log:  # a crash mid-epoch left this behind
        log.write(json.dumps({"type": "step", "epoch": 2, "step": 99}) + "\n")
    train(whole, data, tmp_path / "part", resume=True, progress=False)

    assert read_log(tmp_path / "part")[1] == read_log(tmp_path / "whole")[1]
    assert read_log(tmp_path / "part")[0] == read_log(tmp_path / "whole")[0]
    a, _, _ = load_model(tmp_path / "whole" / "last")
    b, _, _ = load_model(tmp_path / "part" / "last")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.training
def test_captions_of_one_image_share_its_encoding(data, tmp_path, monkeypatch):
    """With loss.false_negatives=same_image a batch encodes each of its images once."""
    seen = []
    original = RVSEPP.encode_images

    def encode_images(self, features, lengths=None):
        seen.append(len(features))
        return original(self, features, lengths)

    monkeypatch.setattr(RVSEPP, "encode_images", encode_images)
    config = load_config(None, {**TINY, "train.epochs": 1, "loss.false_negatives": "same_image"})
    result = train(config, data, tmp_path / "run", progress=False)
    training = seen[:20]  # 20 steps of 16 captions of 64 images (5 each), then the dev encoding
    assert all(n <= 16 for n in training) and any(n < 16 for n in training)
    assert result["best_rsum"] > 0


@pytest.mark.training
def test_warmup_uses_all_negatives_first(data, tmp_path):
    config = load_config(None, {**TINY, "train.epochs": 2, "loss.name": "hardest"})
    config.loss.warmup_epochs = 1
    train(config, data, tmp_path / "run", progress=False)
    objectives = {r["epoch"]: r["objective"] for r in read_log(tmp_path / "run")[0]}
    assert objectives == {1: "all", 2: "hardest"}


@pytest.mark.training
def test_an_existing_run_is_not_overwritten(data, tmp_path):
    config = load_config(None, {**TINY, "train.epochs": 1})
    train(config, data, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train(config, data, tmp_path / "run", progress=False)


@pytest.mark.training
def test_command_line_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    args = ["--train", "48", "--dev", "10", "--test", "10", "--regions", "8", "--feature-dim", "12"]
    assert main(["data", "synth", "--out", str(data), *args]) == 0
    tiny = [f"--{k}={v}" for k, v in TINY.items()]
    for run, seed in (("a", "0"), ("b", "1")):
        argv = ["train", "--data", str(data), "--out", str(tmp_path / run), "--epochs", "1"]
        assert main([*argv, "--seed", seed, "--no-progress", *tiny]) == 0
    report = tmp_path / "metrics.json"
    argv = ["eval", "--checkpoint", str(tmp_path / "a" / "best"), "--data", str(data)]
    assert main([*argv, "--json", str(report), "--save-sims", str(tmp_path / "sims.pt")]) == 0
    out = capsys.readouterr().out
    assert "image->text" in out and "rSum" in out
    metrics = json.loads(report.read_text())["metrics"]
    sims = torch.load(tmp_path / "sims.pt")
    assert sims.shape == (10, 50)

    ensemble = tmp_path / "ensemble.json"
    argv += ["--ensemble", str(tmp_path / "b" / "best"), "--json", str(ensemble)]
    assert main(argv) == 0
    assert json.loads(ensemble.read_text())["checkpoints"][1].endswith("b/best")
    assert json.loads(ensemble.read_text())["metrics"] != metrics

    assert main(["eval", "--checkpoint", str(tmp_path / "a" / "best"), "--data", "nowhere"]) == 2
    assert "nowhere: data directory not found" in capsys.readouterr().err

    model_args = ["--checkpoint", str(tmp_path / "a" / "best"), "--data", str(data)]
    assert main(["encode", *model_args, "--out", str(tmp_path / "emb.pt")]) == 0
    saved = torch.load(tmp_path / "emb.pt")
    assert saved["images"].shape == (10, 32) and saved["captions"].shape == (50, 32)
    torch.testing.assert_close(saved["images"] @ saved["captions"].T, sims)
    capsys.readouterr()
    query = open_split(data, "test").captions[7]
    assert main(["search", *model_args, "--query", query, "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    best_images = (sims[:, 7]).argsort(descending=True)[:3].tolist()
    assert [h["image"] for h in hits] == best_images
    argv = ["search", *model_args, "--image-index", "2", "--k", "50", "--json"]
    assert main([*argv, "--embeddings", str(tmp_path / "emb.pt"), "--backend", "faiss"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["caption_index"] for h in hits] == sims[2].argsort(descending=True).tolist()
    assert sum(h["match"] for h in hits) == 5
    fold_report = tmp_path / "fold5.json"
    assert main(["eval", *model_args, "--fold5", "--json", str(fold_report)]) == 0
    assert "test split, 5 folds of 2 images" in capsys.readouterr().out
    want = embedding_metrics(saved["images"], saved["captions"], 5, fold5=True)
    assert json.loads(fold_report.read_text())["metrics"] == pytest.approx(want)
    assert main(["search", *model_args, "--image-index", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("image -> text: image 2 of test") and out.count("(ground truth)") <= 5


def test_a_size_the_architecture_does_not_use_is_an_error(data, tmp_path):
    with pytest.raises(
        ValueError, match=r"model.mlp_hidden does not apply to model.architecture=vsepp"
    ):
        config = load_config(None, {**TINY, "model.architecture": "vsepp"})
        train(config, data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.training
def test_run_output_and_files(data, tmp_path, capsys, monkeypatch):
    """A start-of-run summary, epoch times, rounded log values, shareable checkpoint directories
    and the optimiser state only in ``last``."""
    from selhn.training import trainer as trainer_module

    rsums = iter([300.0, 200.0, 100.0])  # the first epoch stays the best

    def fake_evaluate(*args, **kwargs):
        return {"rsum": next(rsums)}

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    config = load_config(None, {**TINY, "train.epochs": 3, "train.lr_decay_epoch": 1})
    train(config, data, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert "data   train 64 images, 320 captions; dev 20 images, 100 captions" in out
    assert "steps  20 per epoch (global batch 16), 60 in 3 epochs" in out
    assert "epoch 1/3  dev rSum 300.0  (best 300.0 at epoch 1)" in out and "left" in out
    assert [r["lr"] for r in read_log(tmp_path / "run")[0]][
        -1
    ] == 2e-4  # not 0.00020000000000000004
    best, last = (tmp_path / "run" / "best").resolve(), (tmp_path / "run" / "last").resolve()
    assert best.name == "epoch-001" and last.name == "epoch-003"
    states = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert states == ["epoch-003.trainer_state.pt"]  # beside last, none in a model directory
    assert not list(best.glob("*.pt")) and not list(last.glob("*.pt"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(last.stat().st_mode) == 0o777 & ~umask


def scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.training
def test_tensorboard_events_hold_the_logs_scalars_and_survive_a_resume(data, tmp_path, capsys):
    argv = ["train", "--data", str(data), "--no-progress", "--log", "tensorboard"]
    argv += [f"--{k}={v}" for k, v in TINY.items()]
    assert main([*argv, "--out", str(tmp_path / "whole"), "--epochs", "2"]) == 0
    steps, evals = read_log(tmp_path / "whole")
    for name in ("loss", "grad_norm_image", "vanishing_i2t", "gap_t2i", "active_i2t", "lr"):
        want = [(r["step"], r[name]) for r in steps]
        got = scalars(tmp_path / "whole", f"train/{name}")
        assert [s for s, _ in got] == [s for s, _ in want], name
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), name
    assert scalars(tmp_path / "whole", "dev/rsum") == [
        (r["step"], pytest.approx(r["rsum"], rel=1e-6)) for r in evals
    ]
    assert [r["step"] for r in evals] == [19, 39]
    # a run stopped after one epoch and resumed writes the same series, nothing twice
    assert main([*argv, "--out", str(tmp_path / "part"), "--epochs", "1"]) == 0
    from torch.utils.tensorboard import SummaryWriter

    crashed = SummaryWriter(str(tmp_path / "part" / "tensorboard"))  # epoch 2 begun, then a crash
    crashed.add_scalar("train/loss", 99.0, 25)
    crashed.close()
    assert (25, 99.0) in scalars(tmp_path / "part", "train/loss")
    assert main([*argv, "--out", str(tmp_path / "part"), "--epochs", "2", "--resume"]) == 0
    for tag in ("train/loss", "dev/rsum"):
        assert scalars(tmp_path / "part", tag) == scalars(tmp_path / "whole", tag), tag


@pytest.mark.training
def test_a_run_of_0_1_0_resumes_exactly(data, tmp_path):
    """0.1.0 numbered epochs from 0 (log, checkpoint names, ``epoch`` in config.json), kept
    every tensor in ``weights.pt`` and the training state inside the checkpoint, saved one loss's
    state as ``loss``, no epoch in the training state and none of the keys added since (those
    chosen from the data now resume as such a run was trained)."""
    settings = {**TINY, "loss.name": "infonce"}
    train(
        load_config(None, {**settings, "train.epochs": 2}), data, tmp_path / "whole", progress=False
    )
    part = tmp_path / "part"
    train(load_config(None, {**settings, "train.epochs": 1}), data, part, progress=False)
    new, old_dir = part / "checkpoints" / "epoch-001", part / "checkpoints" / "epoch-000"
    model, _, meta = load_model(new)
    state = torch.load(part / "checkpoints" / "epoch-001.trainer_state.pt", weights_only=True)
    old = {key: state[key] for key in ("optimizer", "best_rsum", "best_epoch")}
    old["loss"] = {"logit_scale": state["losses"]["infonce.logit_scale"]}
    new.rename(old_dir)
    (part / "checkpoints" / "epoch-001.trainer_state.pt").unlink()
    torch.save(old, old_dir / "trainer_state.pt")
    (old_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), old_dir / "weights.pt")
    for section, key in [("model", "backbone_stage"), ("model", "image_head"),
                         ("model", "class_prior"), ("train", "weight_average")]:  # fmt: skip
        del meta["config"][section][key]  # keys added after 0.1.0
    meta.update(format=1, epoch=0)
    for key in ("packaged", "finished", "train_data", "image_features", "command"):
        meta.pop(key, None)
    (old_dir / "config.json").write_text(json.dumps(meta))
    for link in ("last", "best"):
        (part / link).unlink()
        (part / link).symlink_to("checkpoints/epoch-000")
    records = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    (part / "log.jsonl").write_text("".join(
        json.dumps({**r, "epoch": r["epoch"] - 1}) + "\n" for r in records))  # fmt: skip
    train(
        load_config(None, {**settings, "train.epochs": 2}), data, part, resume=True, progress=False
    )
    assert read_log(part) == read_log(tmp_path / "whole")
    assert [r["epoch"] for r in read_log(part)[1]] == [1, 2]  # the old records renumbered
    assert json.loads((part / "log.jsonl").read_text().splitlines()[0])["epoch"] == 1
    assert (part / "last").resolve().name == "epoch-002"
    assert not list(old_dir.glob("*.pt"))  # best, no longer last: its state is gone


@pytest.mark.training
def test_training_stops_early_and_stays_stopped(data, tmp_path, capsys, monkeypatch):
    from selhn.checkpoint import read_meta
    from selhn.training import trainer as trainer_module

    rsums = iter([100.0, 120.0, 110.0, 115.0, 90.0, 200.0])
    monkeypatch.setattr(trainer_module, "evaluate", lambda *args, **kwargs: {"rsum": next(rsums)})
    config = load_config(None, {**TINY, "train.epochs": 6, "train.patience": 2})
    run = tmp_path / "run"
    # the best is epoch 2; epochs 3 and 4 do not beat it: training ends after epoch 4
    assert train(config, data, run, progress=False) == {
        "best_epoch": 2,
        "best_rsum": 120.0,
        "epochs": 4,
    }
    assert "stopping early: dev rSum has not improved for 2 epochs" in capsys.readouterr().out
    assert read_meta(run / "last")["finished"] and read_meta(run / "last")["epoch"] == 4
    assert (run / "best").resolve().name == "epoch-002"
    assert train(config, data, run, resume=True, progress=False)["epochs"] == 4  # nothing more
    assert [r["epoch"] for r in read_log(run)[1]] == [1, 2, 3, 4]


@pytest.mark.training
def test_the_paper_recipe_trains_as_selhn_0_1_0_did(data, tmp_path):
    """``--recipe paper``: 30 epochs, batch 128, the learning rate x0.1 from epoch 15, no
    warm-up and no early stop, whatever dev rSum does (small sizes for the test's speed)."""
    sizes = {"model.embed_size": 32, "model.word_dim": 16, "model.mlp_hidden": 16}
    config, _, _ = layered("paper", None, {**sizes, "train.log_every": 1})
    train(config, data, tmp_path / "run", progress=False)
    steps, evals = read_log(tmp_path / "run")
    assert [r["step"] for r in steps] == list(range(30 * 3))  # 320 captions: 3 batches an epoch
    assert [r["epoch"] for r in steps] == [step // 3 + 1 for step in range(90)]
    assert [r["lr"] for r in steps] == [5e-4 * (0.1 if r["epoch"] > 15 else 1) for r in steps]
    assert {r["objective"] for r in steps} == {"selhn"}
    assert [r["epoch"] for r in evals] == list(range(1, 31))


@pytest.mark.training
def test_a_checkpoint_holds_the_average_of_the_weights_after_each_step(data, tmp_path, monkeypatch):
    from test_weight_average import moving_average

    from selhn.training import trainer as trainer_module

    weights = []  # the image map's live weight at the start and after each step
    start_model, step = trainer_module.start_model, trainer_module.train_step

    def started(*args):
        model, vocab, saved = start_model(*args)
        weights.append(model.image_encoder.fc.weight.detach().clone())
        return model, vocab, saved

    def recorded(network, objective, model, *args):
        values = step(network, objective, model, *args)
        weights.append(model.image_encoder.fc.weight.detach().clone())
        return values

    monkeypatch.setattr(trainer_module, "start_model", started)
    monkeypatch.setattr(trainer_module, "train_step", recorded)
    config = load_config(None, {**TINY, "train.epochs": 2, "train.weight_average": 0.8})
    train(config, data, tmp_path / "averaged", progress=False)
    averaged_run = list(weights)
    weights.clear()
    config = load_config(None, {**TINY, "train.epochs": 2, "train.weight_average": 0.0})
    train(config, data, tmp_path / "live", progress=False)
    assert len(weights) == 1 + 40 and all(map(torch.equal, averaged_run, weights))

    saved, vocab, _ = load_model(tmp_path / "averaged" / "last")
    live, _, _ = load_model(tmp_path / "live" / "last")
    assert torch.equal(live.image_encoder.fc.weight, weights[-1])
    expected = moving_average(weights[0], weights[1:], 0.8)
    torch.testing.assert_close(saved.image_encoder.fc.weight.detach(), expected)
    assert not torch.allclose(expected, weights[-1], atol=1e-3)  # the average differs
    logged = read_log(tmp_path / "averaged")[1][-1]["rsum"]
    dev = evaluate(saved, open_split(data, "dev"), vocab, 64, torch.device("cpu"))
    assert logged == pytest.approx(dev["rsum"], abs=1e-6)
