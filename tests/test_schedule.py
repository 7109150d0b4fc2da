"""The per-epoch plan and the step count, against what the loop and a DataLoader do."""

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from selhn.config.resolve import recipe_values
from selhn.config.schedule import fit_schedule, steps_per_epoch
from selhn.config.schema import Config, load_config
from selhn.training.schedule import EpochPlan, make_schedule, plan_epoch


def test_the_plan_of_each_epoch():
    settings = {"loss.name": "hardest", "loss.warmup_epochs": 1}
    config = load_config(None, {**settings, "train.backbone_frozen_epochs": 3})
    plans = [plan_epoch(config.train, config.loss, epoch) for epoch in range(4)]
    assert plans == [
        EpochPlan("all", False),
        EpochPlan("hardest", False),
        EpochPlan("hardest", False),
        EpochPlan("hardest", True),
    ]


@pytest.mark.parametrize(
    ("pairs", "epochs", "warmup", "decay", "patience"),
    [
        # 652 pairs, batch 128: 6 steps an epoch; 1000 steps need 167 epochs
        (652, 167, 50, 501, 9),
        # 20,000 pairs: 157 steps an epoch; 1000 steps need 7 epochs, at least 30
        (20_000, 30, 236, 2355, 5),
        # 100 pairs: 1 step an epoch; 1000 steps need 1000 epochs, at most 300
        (100, 300, 15, 150, 15),
    ],
)
def test_the_rule_fits_the_data(pairs, epochs, warmup, decay, patience):
    train = load_config().train
    chosen = fit_schedule(train, pairs)
    assert len(chosen) == 4  # every choice is explained
    keys = ("epochs", "warmup_steps", "lr_decay_epoch", "patience")
    again = load_config(None, {f"train.{key}": getattr(train, key) for key in keys})
    assert again.train == train  # the resolved values, written out, read back the same
    schedule = make_schedule(train, pairs)
    assert (schedule.epochs, schedule.warmup_steps) == (epochs, warmup)
    assert (schedule.decay_step, schedule.patience) == (decay, patience)
    lr = 5e-4
    assert schedule.lr(0) == pytest.approx(lr / warmup)  # warm-up: linear from lr / warmup
    assert schedule.lr(warmup // 2) == pytest.approx(lr * (warmup // 2 + 1) / warmup)
    assert schedule.lr(warmup - 1) == schedule.lr(warmup) == lr
    assert schedule.lr(decay - 1) == lr and schedule.lr(decay) == pytest.approx(lr * 0.1)


def test_the_paper_schedule_is_the_epoch_rule_of_0_1_0():
    config = Config()
    config.update(recipe_values("paper"), "paper")
    assert fit_schedule(config.train, 1000) == []  # nothing left to the rule
    schedule = make_schedule(config.train, 1000)
    per_epoch = 8  # 1000 pairs at 128
    assert (schedule.steps_per_epoch, schedule.epochs, schedule.patience) == (per_epoch, 30, 0)
    for step in range(schedule.total_steps):
        epoch = step // per_epoch
        assert schedule.lr(step) == 5e-4 * (0.1 if epoch >= 15 else 1.0), step


def test_an_unresolved_schedule_is_refused():
    with pytest.raises(ValueError, match=r"needs a resolved configuration"):
        make_schedule(load_config().train, 100)


def test_given_values_are_kept():
    overrides = {"train.epochs": 7, "train.warmup_steps": 3, "train.patience": 0}
    config = load_config(None, {**overrides, "train.lr_decay_epoch": 2, "train.lr": 1e-3})
    schedule = make_schedule(config.train, 100)  # 1 step an epoch
    assert (schedule.epochs, schedule.warmup_steps, schedule.decay_step) == (7, 3, 2)
    assert [schedule.lr(s) for s in range(4)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-4, 1e-4])


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
