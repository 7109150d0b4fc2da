import pytest
import torch
from torch import nn

from selhn.config.schema import load_config
from selhn.training.weight_average import WeightAverage


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


def test_a_decay_outside_0_to_1_is_refused_by_name():
    with pytest.raises(ValueError, match=r"train.weight_average must be in \[0, 1\)"):
        load_config(None, {"train.weight_average": 1.0}).validate()
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\); got -0.5"):
        WeightAverage([nn.Parameter(torch.zeros(1))], -0.5)
