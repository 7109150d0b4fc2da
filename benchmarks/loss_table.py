"""The loss comparison of ``real_data.py``: each loss with each false-negative mode, over seeds,
on the full model with every other setting at its default.

A loss is a name of ``selhn experiment --losses`` (``hardest+warmup``: one all-negatives epoch
first), optionally with its own learning rate (``selhn@1e-4``); a mode a value of
``loss.false_negatives``. Every run is trained here, so all of them are timed alike (``--jobs``
side by side), and recorded in the ledger (``selhn.training.run_ledger``) as it finishes; a run
the ledger holds is read from it, not trained again.
"""

from __future__ import annotations

import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from training_runs import (
    config_differences,
    mean_std,
    report_path,
    train_and_test,
    trained_config,
)

from selhn.config.schema import loss_setup
from selhn.data.duplicates import split_duplicates
from selhn.data.precomp import open_split
from selhn.training.run_dir import run_summary, vanishing_peak
from selhn.training.run_ledger import RunLedger

MARKERS = ("<!-- real_data losses -->", "<!-- /real_data losses -->")


def flags(loss: str, mode: str) -> list[str]:
    """``selhn train`` flags of a loss (``NAME`` or ``NAME@LR``) and false-negative mode."""
    name, _, lr = loss.partition("@")
    setup = loss_setup(f"{name}:{mode}")
    out = ["--loss", setup.pop("loss.name"), "--false-negatives", setup.pop("loss.false_negatives")]
    out += [f"--lr={float(lr)}"] if lr else []
    return out + [f"--{key}={value}" for key, value in setup.items()]


class Comparison:
    """Runs, results and the table of every (set, loss, mode, seed)."""

    def __init__(
        self, losses: list[str], modes: list[str], seeds: int, ledger: RunLedger, jobs: int = 1
    ) -> None:
        self.cases = [(loss, mode) for loss in losses for mode in modes]
        for loss, mode in self.cases:
            flags(loss, mode)  # a bad name fails now, not hours later
        self.seeds, self.ledger, self.jobs = seeds, ledger, max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.results: dict[str, dict[tuple[str, str], list[dict]]] = {}
        self.duplicates: list[str] = []

    def run(self, name: str, features: Path, out: Path, finished_only: bool = False) -> None:
        """Train and test every case of one set under ``out`` (reusing what is there or in the
        ledger); with ``finished_only``, only read the runs already trained and tested."""
        for split_name in ("train", "dev", "test"):
            split = open_split(features, split_name)
            found = split_duplicates(split, "same_caption")
            counts = found.counts(split.caption_images)
            self.duplicates.append(
                f"| {name} | {split_name} | {split.num_images} | {len(split.captions)} | "
                f"{counts['extra_pairs']} | {counts['captions_with_extra_images']} | "
                f"{counts['images_per_caption']:.2f} | {counts['captions_per_image']:.2f} |"
            )
        # seed by seed, so a table read before the end compares every case
        tasks = [(case, seed) for seed in range(self.seeds) for case in self.cases]

        def one(task):
            (loss, mode), seed = task
            asked = flags(loss, mode)
            recorded = self.ledger.get((name, loss, mode, seed))
            if recorded is not None:
                differ = config_differences(recorded["config"], features, asked, seed)
                if differ:
                    raise SystemExit(
                        f"{self.ledger.path}: {self.ledger.describe((name, loss, mode, seed))} "
                        f"was trained with {'; '.join(differ)}; remove its line to train it again"
                    )
                return recorded
            run = out / "runs" / f"{loss}-{mode}-seed{seed}"
            if finished_only and not report_path(run).exists():
                return None
            found = train_and_test(features, run, asked, seed, self.threads)
            record = {"set": name, "loss": loss, "false_negatives": mode, "seed": seed, **found,
                      "vanishing": vanishing_peak(run), "summary": run_summary(run),
                      "config": trained_config(run)}  # fmt: skip
            self.ledger.add(record)
            return record

        with ThreadPoolExecutor(self.jobs) as pool:
            done = list(pool.map(one, tasks))
        per_case = self.results.setdefault(name, {})
        for (case, _), found in zip(tasks, done, strict=True):
            if found is not None:
                per_case.setdefault(case, []).append(found)

    def table(self) -> str:
        """The markdown table and the per-seed lines."""
        lines = [
            f"{self.seeds} seeds asked (`seeds`: those finished), test split, mean ± std; runs "
            f"{self.jobs} side by side, {self.threads} thread(s) each; train minutes of the runs "
            "not resumed after an interruption",
            "",
            "| set | loss | false negatives | seeds | test rSum | duplicate-aware rSum | vanishing "
            "peak | train min |",
            "|---|---|---|---|---|---|---|---|",
        ]
        seeds = []
        for name, per_case in self.results.items():
            for (loss, mode), runs in per_case.items():
                peaks = [r["vanishing"] for r in runs if r["vanishing"] is not None]
                peak = f"{statistics.mean(peaks):.2f}" if peaks else "-"
                whole = [r["seconds"] for r in runs if not r["resumed"]]
                minutes = f"{statistics.mean(whole) / 60:.1f}" if whole else "-"
                lines.append(
                    f"| {name} | {loss} | {mode} | {len(runs)} | "
                    f"{mean_std([r['rsum'] for r in runs])} | "
                    f"{mean_std([r['dup_rsum'] for r in runs])} | {peak} | {minutes} |"
                )
                seeds += [f"- {name} {loss} {mode} seed {r['seed']}: test rSum {r['rsum']:.1f} "
                          f"(duplicate-aware {r['dup_rsum']:.1f}); {r['summary']}"
                          for r in runs]  # fmt: skip
        duplicates = [
            "Extended positives (`same_caption`: identical caption words or image files) per "
            "split:",
            "",
            "| set | split | images | captions | extra positive pairs | captions describing "
            "another image | positive images per caption | positive captions per image |",
            "|---|---|---|---|---|---|---|---|",
            *self.duplicates,
        ]
        return "\n".join([*lines, "", *duplicates, "", "Per seed:", "", *seeds])

    def report(self, path: Path, docs: str | None) -> None:
        """Print the table, write it to ``path`` and into ``docs``'s marked block."""
        text = self.table()
        print(text)
        path.write_text(text + "\n")
        if docs:
            page = Path(docs).read_text()
            start, end = (page.index(marker) for marker in MARKERS)
            block = f"{MARKERS[0]}\n{text}\n"
            Path(docs).write_text(page[:start] + block + page[end:])
        json_path = path.with_suffix(".json")
        results = {name: {f"{loss}:{mode}": runs for (loss, mode), runs in per_case.items()}
                   for name, per_case in self.results.items()}  # fmt: skip
        json_path.write_text(json.dumps(results, indent=2))
