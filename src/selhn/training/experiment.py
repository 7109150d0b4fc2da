"""The paper's experiment: the same model trained once per loss and seed, compared.

Everything per step comes from the trainer's ``log.jsonl``; this module only runs the trainer,
evaluates each run's best checkpoint on the test split, aggregates and plots. Runs that already
finished are reused and interrupted ones resumed, so an experiment can be continued.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml

from selhn.checkpoint import load_model, read_meta
from selhn.config.resolve import AUTO, check_resumable, dotted, resolve
from selhn.config.schema import Config, loss_setup
from selhn.config.upgrade import saved_config
from selhn.data.facts import DataFacts
from selhn.evaluation.evaluate import evaluate, split_for
from selhn.evaluation.metrics import METRIC_NAMES
from selhn.training.run_dir import read_log
from selhn.training.trainer import train
from selhn.utils.distributed import resolve_device
from selhn.utils.extras import require_all


def _finished(run: Path, config: Config) -> bool:
    """Whether a run's schedule is done (runs of selhn 0.1.0: all epochs trained); a run
    trained with settings a resume may not change is refused, as a resume would refuse it."""
    if not (run / "last").exists():
        return False
    meta = read_meta(run / "last")
    check_resumable(saved_config(meta["config"], str(run / "last")), config, run / "last")
    return meta["finished"] if "finished" in meta else meta["epoch"] + 1 == config.train.epochs


def _test_metrics(run: Path, data: Path, split: str, device_name: str) -> dict[str, float]:
    cached = run / f"{split}_metrics.json"
    if cached.exists():
        return json.loads(cached.read_text())
    device = resolve_device(device_name)
    model, vocab, _ = load_model(run / "best", device)
    metrics = evaluate(model, split_for(model, data, split), vocab, 256, device)
    cached.write_text(json.dumps(metrics, indent=2))
    return metrics


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def loss_changes(loss: str, config: Config, base: Config) -> dict[str, Any]:
    """What the runs of a compared loss set: its ``loss_setup``, and every other setting in
    which its ``config`` differs from the ``base`` (what the recipe sets for that loss), the
    seed aside."""
    mine, others = dotted(config.to_dict()), dotted(base.to_dict())
    differ = {k: v for k, v in mine.items() if others.get(k) != v and k != "train.seed"}
    return {**loss_setup(loss), **differ}


def run_experiment(
    data: str | Path,
    out: str | Path,
    losses: list[str],
    seeds: int = 3,
    recipe: str = AUTO,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    command: str = "",
    test_split: str = "test",
    plot_epochs: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Train every (loss, seed), evaluate on ``test_split``, write results and figures. Each
    run's configuration is resolved from ``recipe``, ``config_file`` and ``overrides`` with the
    loss's changes and its seed."""
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = DataFacts.read(data)
    base = resolve(facts, recipe, config_file, overrides)
    for line in base.choices:
        print(line, flush=True)
    require_all(base.config.model.extras(), "this model")
    runs: dict[str, list[Path]] = {}
    results: dict[str, Any] = {"command": command, "config": base.config.to_dict(), "losses": {}}
    for loss in losses:
        runs[loss] = []
        per_seed = []
        for seed in range(seeds):
            changes = {**(overrides or {}), **loss_setup(loss), "train.seed": seed}
            config = resolve(facts, recipe, config_file, changes).config
            setup = loss_changes(loss, config, base.config)
            run = out / "runs" / f"{loss}-seed{seed}"
            if not _finished(run, config):
                print(f"[experiment] {loss}, seed {seed} -> {run}", flush=True)
                resume = (run / "last").exists()
                train(config, data, run, resume=resume, progress=progress)
            runs[loss].append(run)
            per_seed.append(_test_metrics(run, data, test_split, config.train.device))
        results["losses"][loss] = {
            "changes": setup,
            "seeds": per_seed,
            **{name: _mean_std([m[name] for m in per_seed]) for name in METRIC_NAMES},
        }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results, test_split))
    from selhn.training.plots import plot_experiment

    plot_experiment(
        {loss: [read_log(r) for r in paths] for loss, paths in runs.items()}, out, plot_epochs
    )
    return results


def results_markdown(results: dict[str, Any], split: str) -> str:
    """The test metrics table (mean ± std over seeds), the command and the configuration."""
    columns = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]
    seeds = len(next(iter(results["losses"].values()))["seeds"])
    lines = [
        f"# Loss comparison: {split} split, mean ± std over {seeds} seed(s)",
        "",
        "| loss | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for loss, entry in results["losses"].items():
        cells = [f"{entry[c]['mean']:.1f} ± {entry[c]['std']:.1f}" for c in columns]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", "Each loss changes only these settings:", ""]
    lines += [f"- {loss}: `{entry['changes']}`" for loss, entry in results["losses"].items()]
    lines += ["", "Command:", "", "```", results["command"] or "(Python API)", "```", ""]
    lines += ["Configuration shared by every run:", "", "```yaml"]
    lines += [yaml.safe_dump(results["config"], sort_keys=False).rstrip(), "```", ""]
    lines += [f"torch {torch.__version__}", ""]
    return "\n".join(lines)
