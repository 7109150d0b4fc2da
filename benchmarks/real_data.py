"""selhn on real image-caption sets with default settings, as a user runs it: the full model
against the probe baseline, over seeds.

For each set of ``benchmarks/real_sets.py``: build it, ``selhn features`` (timed), then for each
model and seed ``selhn train --data FEATURES --out RUN --seed S`` with no tuning flags (the probe
adds only ``--architecture probe``), timed, and ``selhn eval`` on the test split. Prints one table
(test rSum mean ± std, train minutes) and, per set, the full model's rSum over the probe's and its
time per 1,000 images, features included; then one line per run (best dev rSum, its epoch, the
epochs trained, the peak share of anchors in the vanishing regime).

``--losses`` also compares losses on the full model (``loss_table.py``): each loss (a name of
``selhn experiment --losses``) with each ``--false-negatives`` mode, per seed, ``selhn train
--loss NAME --false-negatives MODE`` and ``selhn eval``; the table (test rSum, standard and
duplicate-aware, peak vanishing share, minutes) is printed, written to ``WORK/losses.md`` and,
with ``--docs FILE``, into FILE between its ``<!-- real_data losses -->`` markers (after each
set too, without ``--docs``). ``--finished-only`` trains nothing: both tables show only the runs
already trained and tested (the model table says how many seeds). ``--jobs N``
trains N runs side by side, each with (CPU cores / N) threads; ``--models ''`` trains no
model comparison. Each loss run is recorded as it finishes in ``--ledger`` (by default the
committed ``benchmarks/results/real_data_losses.jsonl``), from which the table is made on any
machine: a run recorded there is not trained again.

Everything is written under ``--work`` and reused: a rerun measures only what is missing.

Usage: python benchmarks/real_data.py [--sets openclipart,emoji,samples] [--seeds 3]
           [--models full,probe] [--work runs/real_data]
           [--losses infonce,selhn,hardest,hardest+warmup,selnce]
           [--false-negatives none,same_caption] [--jobs 1] [--docs docs/experiment.md]
           [--ledger benchmarks/results/real_data_losses.jsonl] [--finished-only]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from loss_table import Comparison
from real_sets import build
from training_runs import mean_std, report_path, selhn, timed_once, train_and_test

from selhn.training.run_dir import run_summary
from selhn.training.run_ledger import RunLedger

# full: the default model (the own-data recipe: the backbone's last stage learning on the stored
# trunk activations, frozen sentence embeddings, the class prior, InfoNCE); probe: the baseline
MODELS = {"full": [], "probe": ["--architecture", "probe"]}
LEDGER = Path(__file__).parent / "results" / "real_data_losses.jsonl"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="openclipart,emoji,samples")
    parser.add_argument("--models", default="full,probe")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--losses", help="also compare these losses on the full model")
    parser.add_argument("--false-negatives", default="none,same_caption")
    parser.add_argument("--jobs", type=int, default=1, help="loss runs side by side")
    parser.add_argument("--docs", help="write the loss table into this file's marked block")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="tables of the finished runs only; trains nothing",
    )
    parser.add_argument("--ledger", default=str(LEDGER), help="the finished loss runs")
    parser.add_argument("--work", default="runs/real_data")
    args = parser.parse_args()
    work = Path(args.work)
    ledger = RunLedger(Path(args.ledger))
    if args.losses:
        compare = Comparison(args.losses.split(","), args.false_negatives.split(","),
                             args.seeds, ledger, args.jobs)  # fmt: skip

    rows, summary, per_run = [], [], []
    for name in args.sets.split(","):
        # a set whose runs the ledger holds is prepared (built, its features computed) here
        recorded = bool(args.losses) and ledger.holds_set(name)
        prepared = (work / name / "features" / "features.json").exists()
        if args.finished_only and not (prepared or recorded):
            continue
        features, feature_s, images = prepare(name, work)
        results = {}
        for model in [m for m in args.models.split(",") if m]:
            runs = []
            for seed in range(args.seeds):
                run = work / name / "runs" / f"{model}-seed{seed}"
                if args.finished_only and not report_path(run).exists():
                    continue
                runs.append(train_and_test(features, run, MODELS[model], seed))
                per_run.append(f"{name} {model} seed {seed}: test rSum {runs[-1]['rsum']:.1f}; "
                               f"{run_summary(run)}")  # fmt: skip
            if not runs:
                continue
            results[model] = runs
            rsums = [r["rsum"] for r in runs]
            minutes = statistics.mean(r["seconds"] for r in runs) / 60
            rows.append(f"| {name} | {model} | {len(runs)} | {mean_std(rsums)} | {minutes:.1f} |")
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
            compare.run(name, features, work / name / "losses", args.finished_only)
            compare.report(work / "losses.md", None)  # the table so far

    print(f"\n{args.seeds} seeds, default settings, test split")
    print("| set | model | seeds | test rSum | train min |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n".join(summary))
    print("\n".join(per_run))
    if args.losses:
        compare.report(work / "losses.md", args.docs)


if __name__ == "__main__":
    main()
