import pytest
import torch
from torch import nn

import selhn.trainer
from selhn.checkpoint import load_model
from selhn.config import load_config
from selhn.data.precomp import open_split
from selhn.data.synth import SynthConfig, generate
from selhn.retrieval import evaluate
from selhn.run_dir import read_log
from selhn.trainer import train
from selhn.weight_average import WeightAverage

TINY = {
    "model.embed_size": 32,
    "model.word_dim": 16,
    "model.mlp_hidden": 16,
    "train.batch_size": 16,
    "train.lr": 2e-3,
    "train.warmup_steps": 0,
    "train.lr_decay_epoch": 100,
    "train.patience": 0,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(train=64, dev=20, test=20, regions=8, feature_dim=16, seed=1))
    return root


def moving_average(start: torch.Tensor, values: list[torch.Tensor], decay: float) -> torch.Tensor:
    """The average after each of ``values``, one update at a time, decay warmed up."""
    average = start.clone()
    for n, value in enumerate(values):
        rate = min(decay, (1 + n) / (10 + n))
        average = rate * average + (1 - rate) * value
    return average


def test_the_average_follows_the_warmed_up_decay_and_swaps_in_and_out():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    start = layer.weight.detach().clone()
    average = WeightAverage(list(layer.parameters()), decay=0.9)
    seen = []
    for _ in range(30):
        with torch.no_grad():
            layer.weight.add_(torch.randn(2, 3))
        seen.append(layer.weight.detach().clone())
        average.update()
    expected = moving_average(start, seen, 0.9)
    live = layer.weight.detach().clone()
    with average.applied():
        torch.testing.assert_close(layer.weight.detach(), expected)
        assert torch.equal(average.state_dict()["live"][0], live)  # the live weights, not these
    assert torch.equal(layer.weight.detach(), live)


def test_a_checkpoint_holds_the_average_of_the_weights_after_each_step(data, tmp_path, monkeypatch):
    weights = []  # the image map's live weight at the start and after each step
    start_model, step = selhn.trainer._start_model, selhn.trainer.train_step

    def started(*args):
        model, vocab, saved = start_model(*args)
        weights.append(model.image_encoder.fc.weight.detach().clone())
        return model, vocab, saved

    def recorded(network, objective, model, *args):
        values = step(network, objective, model, *args)
        weights.append(model.image_encoder.fc.weight.detach().clone())
        return values

    monkeypatch.setattr(selhn.trainer, "_start_model", started)
    monkeypatch.setattr(selhn.trainer, "train_step", recorded)
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


def test_a_decay_outside_0_to_1_is_refused_by_name():
    with pytest.raises(ValueError, match=r"train.weight_average.*None or in \[0, 1\)"):
        load_config(None, {"train.weight_average": 1.0}).validate()
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\); got -0.5"):
        WeightAverage([nn.Parameter(torch.zeros(1))], -0.5)
