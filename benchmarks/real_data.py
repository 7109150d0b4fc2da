"""selhn on real image-caption sets with default settings, as a user runs it: the full model
against the probe baseline, over seeds.

For each set of ``benchmarks/real_sets.py``: build it, ``selhn features`` (timed), then for each
model and seed ``selhn train --data FEATURES --out RUN --seed S`` with no tuning flags (the probe
adds only ``--architecture probe``), timed, and ``selhn eval`` on the test split. Prints one table
(test rSum mean ± std, train minutes) and, per set, the full model's rSum over the probe's and its
time per 1,000 images, features included; then one line per run (best dev rSum, its epoch, the
epochs trained, the peak share of anchors in the vanishing regime). ``--losses`` also compares
losses on the full model with ``selhn experiment`` (its runs of the default loss are the default
full runs, linked: the same configuration and seed).

Everything is written under ``--work`` and reused: a rerun measures only what is missing.

Usage: python benchmarks/real_data.py [--sets openclipart,emoji,samples] [--seeds 3]
           [--models full,probe]
           [--losses all,hardest,hardest+warmup,selhn,infonce] [--work runs/real_data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from real_sets import build

from selhn.config.resolve import resolve
from selhn.data.facts import DataFacts
from selhn.training.run_dir import run_summary

# full: the default model (the own-data recipe: the backbone's last stage learning on the stored
# trunk activations, frozen sentence embeddings, the class prior, InfoNCE); probe: the baseline
MODELS = {"full": [], "probe": ["--architecture", "probe"]}


def selhn(*argv: str) -> float:
    """Run ``selhn ARGV``, failing loudly; return its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selhn", *argv], check=True)
    return time.perf_counter() - started


def timed_once(path: Path, work) -> float:
    """Seconds of ``work()``, recorded in ``path`` so a rerun does not repeat it."""
    if not path.exists():
        path.write_text(json.dumps({"seconds": work()}))
    return json.loads(path.read_text())["seconds"]


def set_manifest(name: str, work: Path) -> Path:
    """The manifest of a set under ``work``, built there first if it is missing."""
    manifest = work / name / "images" / "manifest.jsonl"
    if not manifest.exists():
        build(name, manifest.parent)
    return manifest


def prepare(name: str, work: Path) -> tuple[Path, float, int]:
    """(features directory, seconds to compute them, images) of a set."""
    manifest = set_manifest(name, work)
    features = work / name / "features"
    seconds = timed_once(
        work / name / "features_time.json",
        lambda: selhn("features", "--manifest", str(manifest), "--out", str(features),
                      "--no-progress"),
    )  # fmt: skip
    images = sum(1 for line in manifest.read_text().splitlines() if line.strip())
    return features, seconds, images


def report_path(run: Path) -> Path:
    """Where ``selhn eval`` writes the test metrics of a run (beside it)."""
    return run.parent / f"{run.name}_test.json"


def train_and_test(features: Path, run: Path, flags: list[str], seed: int) -> dict[str, float]:
    """Train (if not done), evaluate on test; return test rSum and train seconds."""
    seconds = timed_once(
        run.parent / f"{run.name}_time.json",
        lambda: selhn("train", "--data", str(features), "--out", str(run), "--seed", str(seed),
                      "--no-progress", *flags),
    )  # fmt: skip
    expected = flags[flags.index("--loss") + 1] if "--loss" in flags else default_loss(features)
    trained = json.loads((run / "last" / "config.json").read_text())["config"]["loss"]["name"]
    if trained != expected:
        raise SystemExit(f"{run}: trained with loss {trained}, not {expected} (a run of another "
                         "version's defaults?); use a new --work")  # fmt: skip
    report = report_path(run)
    if not report.exists():
        selhn("eval", "--checkpoint", str(run / "best"), "--data", str(features),
              "--json", str(report))  # fmt: skip
    return {"rsum": json.loads(report.read_text())["metrics"]["rsum"], "seconds": seconds}


def default_loss(features: Path) -> str:
    """The loss ``selhn train`` picks for ``features`` when no ``--loss`` is given."""
    return resolve(DataFacts.read(features)).config.loss.name


def link_default_runs(set_dir: Path, loss: str, losses: list[str], seeds: int) -> None:
    """Let the loss comparison reuse the default full runs: with the default ``loss`` and the
    same seed, its run has exactly their configuration."""
    if loss not in losses:
        return
    for seed in range(seeds):
        default = set_dir / "runs" / f"full-seed{seed}"
        link = set_dir / "losses" / "runs" / f"{loss}-seed{seed}"
        if (default / "last").exists() and not link.exists():  # loss checked by train_and_test
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(default.resolve(), target_is_directory=True)


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="openclipart,emoji,samples")
    parser.add_argument("--models", default="full,probe")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--losses", help="also compare these losses (selhn experiment)")
    parser.add_argument("--work", default="runs/real_data")
    args = parser.parse_args()
    work = Path(args.work)

    rows, summary, per_run = [], [], []
    for name in args.sets.split(","):
        features, feature_s, images = prepare(name, work)
        results = {}
        for model in args.models.split(","):
            runs = []
            for seed in range(args.seeds):
                run = work / name / "runs" / f"{model}-seed{seed}"
                runs.append(train_and_test(features, run, MODELS[model], seed))
                per_run.append(f"{name} {model} seed {seed}: test rSum {runs[-1]['rsum']:.1f}; "
                               f"{run_summary(run)}")  # fmt: skip
            results[model] = runs
            rsums = [r["rsum"] for r in runs]
            minutes = statistics.mean(r["seconds"] for r in runs) / 60
            rows.append(f"| {name} | {model} | {mean_std(rsums)} | {minutes:.1f} |")
        for full in (m for m in results if m != "probe" and "probe" in results):
            ratio = statistics.mean(r["rsum"] for r in results[full]) / statistics.mean(
                r["rsum"] for r in results["probe"]
            )
            full_s = statistics.mean(r["seconds"] for r in results[full]) + feature_s
            summary.append(
                f"{name}: {images} images; {full} / probe test rSum {ratio:.2f} (target >= 1.10);"
                f" features {feature_s / 60:.1f} min + training = "
                f"{full_s / 60 * 1000 / images:.1f} min per 1,000 images (target <= 10)"
            )
        if args.losses:
            link_default_runs(work / name, default_loss(features), args.losses.split(","),
                              args.seeds)  # fmt: skip
            selhn("experiment", "--data", str(features), "--out", str(work / name / "losses"),
                  "--losses", args.losses, "--seeds", str(args.seeds), "--no-progress")  # fmt: skip
            print((work / name / "losses" / "results.md").read_text())

    print(f"\n{args.seeds} seeds, default settings, test split")
    print("| set | model | test rSum | train min |\n|---|---|---|---|")
    print("\n".join(rows))
    print("\n".join(summary))
    print("\n".join(per_run))


if __name__ == "__main__":
    main()
