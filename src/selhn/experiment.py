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
from selhn.config import load_config
from selhn.defaults import choose_for_data
from selhn.distributed import resolve_device
from selhn.evaluation import METRIC_NAMES
from selhn.retrieval import evaluate, split_for
from selhn.run_dir import read_log
from selhn.trainer import train

# What each compared loss changes in the configuration; nothing else differs between runs.
LOSS_SETUPS: dict[str, dict[str, Any]] = {
    "all": {"loss.name": "all"},
    "hardest": {"loss.name": "hardest"},
    "hardest+warmup": {"loss.name": "hardest", "loss.warmup_epochs": 1},
    "selhn": {"loss.name": "selhn"},
    "infonce": {"loss.name": "infonce"},
}


def parse_losses(text: str) -> list[str]:
    losses = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in losses if name not in LOSS_SETUPS]
    if unknown or not losses:
        raise ValueError(f"--losses: unknown {unknown}; choose from {', '.join(LOSS_SETUPS)}")
    return losses


def _finished(run: Path, epochs: int | None) -> bool:
    """Whether a run's schedule is done (runs of selhn 0.1.0: all ``epochs`` trained)."""
    if not (run / "last").exists():
        return False
    meta = read_meta(run / "last")
    return meta["finished"] if "finished" in meta else meta["epoch"] + 1 == epochs


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


def run_experiment(
    data: str | Path,
    out: str | Path,
    losses: list[str],
    seeds: int = 3,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    command: str = "",
    test_split: str = "test",
    plot_epochs: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Train every (loss, seed), evaluate on ``test_split``, write results and figures."""
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(config_file, overrides)
    choose_for_data(base, data)  # recorded as each run resolves it, not as "auto"
    runs: dict[str, list[Path]] = {}
    results: dict[str, Any] = {"command": command, "config": base.to_dict(), "losses": {}}
    for loss in losses:
        runs[loss] = []
        per_seed = []
        for seed in range(seeds):
            config = load_config(
                config_file, {**(overrides or {}), **LOSS_SETUPS[loss], "train.seed": seed}
            )
            run = out / "runs" / f"{loss}-seed{seed}"
            if not _finished(run, config.train.epochs):
                print(f"[experiment] {loss}, seed {seed} -> {run}", flush=True)
                resume = (run / "last").exists()
                train(config, data, run, resume=resume, progress=progress)
            runs[loss].append(run)
            per_seed.append(_test_metrics(run, data, test_split, config.train.device))
        results["losses"][loss] = {
            "changes": LOSS_SETUPS[loss],
            "seeds": per_seed,
            **{name: _mean_std([m[name] for m in per_seed]) for name in METRIC_NAMES},
        }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results, test_split))
    from selhn.plots import plot_experiment

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
