"""The per-epoch plan and the step count, against what the loop and a DataLoader do."""

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from selhn.config import load_config
from selhn.schedule import EpochPlan, plan_epoch, steps_per_epoch


def test_the_plan_of_each_epoch():
    settings = {"train.lr": 1e-3, "train.lr_decay_epoch": 2, "loss.name": "hardest"}
    settings |= {"loss.warmup_epochs": 1, "train.backbone_frozen_epochs": 3}
    config = load_config(None, settings)
    plans = [plan_epoch(config.train, config.loss, epoch) for epoch in range(4)]
    assert plans == [
        EpochPlan(1e-3, "all", False),
        EpochPlan(1e-3, "hardest", False),
        EpochPlan(1e-3 * 0.1, "hardest", False),
        EpochPlan(1e-3 * 0.1, "hardest", True),
    ]


@pytest.mark.parametrize("pairs", [16, 17, 31, 33, 40])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_steps_per_epoch_is_what_a_loader_yields(pairs, world):
    batch = 8
    steps, drop_last = steps_per_epoch(pairs, batch, world)
    data = list(range(pairs))
    sampler = (
        DistributedSampler(data, world, 0, shuffle=False, drop_last=True) if world > 1 else None
    )
    loader = DataLoader(data, batch // world, sampler=sampler, drop_last=drop_last)
    sizes = [len(b) for b in loader]
    assert steps == len(sizes)
    assert all(size >= 2 for size in sizes)  # a lone pair has no negatives
    assert sum(sizes) == pairs // world - (1 if drop_last else 0)
