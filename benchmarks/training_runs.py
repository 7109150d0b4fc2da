"""Training and testing runs of ``selhn`` in processes of their own, timed once and reused: what
``real_data.py`` and ``loss_table.py`` share."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from selhn.cli import build_parser
from selhn.cli.common import config_overrides
from selhn.cli.train import train_overrides
from selhn.config.resolve import dotted, resolve
from selhn.data.facts import DataFacts


def selhn(*argv: str, threads: int | None = None) -> float:
    """Run ``selhn ARGV``, failing loudly; return its wall time in seconds. ``threads``: the
    torch threads it may use (all by default)."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selhn", *argv], check=True, env=env)
    return time.perf_counter() - started


def timed_once(path: Path, work, resumed: bool = False) -> float:
    """Seconds of ``work()``, recorded in ``path`` (with whether it ``resumed`` an interrupted
    job) so a rerun does not repeat it."""
    if not path.exists():
        path.write_text(json.dumps({"seconds": work(), "resumed": resumed}))
    return json.loads(path.read_text())["seconds"]


def report_path(run: Path) -> Path:
    """Where ``selhn eval`` writes the test metrics of a run (beside it)."""
    return run.parent / f"{run.name}_test.json"


def train_and_test(
    features: Path, run: Path, flags: list[str], seed: int, threads: int | None = None
) -> dict[str, float]:
    """Train (if not done), evaluate on test; return test rSum (standard and duplicate-aware)
    and train seconds."""
    # a run cut short (no time recorded) resumes from its last epoch; its time is then that of
    # the part after the resume, and says so
    resumed = (run / "last").exists() and not (run.parent / f"{run.name}_time.json").exists()
    again = ["--resume"] if resumed else []
    seconds = timed_once(
        run.parent / f"{run.name}_time.json",
        lambda: selhn("train", "--data", str(features), "--out", str(run), "--seed", str(seed),
                      "--no-progress", *flags, *again, threads=threads),
        resumed,
    )  # fmt: skip
    check_trained_as_asked(run, features, flags, seed)
    report = report_path(run)
    if not report.exists() or "duplicate_aware" not in json.loads(report.read_text()):
        selhn("eval", "--checkpoint", str(run / "best"), "--data", str(features),
              "--json", str(report), threads=threads)  # fmt: skip
    found = json.loads(report.read_text())
    timing = json.loads((run.parent / f"{run.name}_time.json").read_text())
    return {"rsum": found["metrics"]["rsum"], "dup_rsum": found["duplicate_aware"]["rsum"],
            "seconds": seconds, "resumed": timing.get("resumed", False)}  # fmt: skip


# settings of how a run is computed and logged, which do not change what it trains
HOW_COMPUTED = ("train.device", "train.eval_batch_size", "train.log_every", "train.tensorboard",
                "data.num_workers")  # fmt: skip


def asked_config(features: Path, flags: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """The configuration ``selhn train --data FEATURES --seed SEED FLAGS`` resolves now."""
    args, extra = build_parser().parse_known_args(
        ["train", "--data", str(features), "--out", "unused", "--seed", str(seed), *flags]
    )
    args.overrides = config_overrides(extra)
    facts = DataFacts.read(features)
    return resolve(facts, args.recipe, args.config, train_overrides(args)).config.to_dict()


def trained_config(run: Path) -> dict[str, Any]:
    """The settings ``run`` was trained with (its last checkpoint's), dotted, without those of
    how it was computed."""
    saved = json.loads((run / "last" / "config.json").read_text())["config"]
    return {key: value for key, value in dotted(saved).items() if key not in HOW_COMPUTED}


def config_differences(
    trained: dict[str, Any], features: Path, flags: list[str], seed: int
) -> list[str]:
    """``"KEY TRAINED, not ASKED"`` for each setting of ``trained`` (dotted) that differs from
    what ``selhn train --data FEATURES --seed SEED FLAGS`` resolves now."""
    asked = dotted(asked_config(features, flags, seed))
    shared = sorted((trained.keys() & asked.keys()) - set(HOW_COMPUTED))
    return [f"{key} {trained[key]!r}, not {asked[key]!r}" for key in shared
            if trained[key] != asked[key]]  # fmt: skip


def check_trained_as_asked(run: Path, features: Path, flags: list[str], seed: int) -> None:
    """Exit, naming the settings, unless a reused ``run`` was trained as its flags ask now (a run
    of another version's defaults would stand for the new ones)."""
    differ = config_differences(trained_config(run), features, flags, seed)
    if differ:
        raise SystemExit(f"{run}: trained with {'; '.join(differ)} (a run of another version's "
                         "defaults?); use a new --work or another name for it")  # fmt: skip


def mean_std(values: list[float]) -> str:
    """``mean ± sample std``; one value alone, without a spread it does not have."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
