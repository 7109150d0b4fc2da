"""Figures of a loss comparison, from the trainer's logs (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from selhn.utils.extras import require

Log = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (step records, eval records)


def _pyplot():
    require("plot", "the experiment's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(logs: list[Log], key: str, kind: int, max_epoch: int | None) -> tuple[np.ndarray, ...]:
    """x values and the (seeds, x) matrix of ``key``, over the x that every seed logged."""
    per_seed = []
    for log in logs:
        records = [
            r for r in log[kind] if key in r and (max_epoch is None or r["epoch"] <= max_epoch)
        ]
        x_key = "step" if kind == 0 else "epoch"
        per_seed.append({r[x_key]: r[key] for r in records})
    common = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    values = np.array([[s[x] for x in common] for s in per_seed], dtype=float)
    return np.array(common), values


def _band(ax, x: np.ndarray, values: np.ndarray, label: str, color: str) -> None:
    ax.plot(x, values.mean(axis=0), label=label, color=color, linewidth=1.2)
    if len(values) > 1:
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2)


def _figure(plt, panels: int, title: str):
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _save(fig, path: Path) -> None:
    handles, labels = fig.axes[0].get_legend_handles_labels()
    columns = max(1, min(len(labels), 3 * len(fig.axes)))
    rows = -(-len(labels) // columns)
    fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    # the legend sits below the panels, off the curves
    fig.tight_layout(rect=(0, 0.03 + 0.06 * rows, 1, 1))
    fig.savefig(path, dpi=120)


def _per_step_figure(
    plt,
    logs: dict[str, list[Log]],
    colors: dict[str, str],
    keys: tuple[str, str],
    title: str,
    max_epoch: int | None,
    ylabel: str,
    **axis: Any,
):
    """Two panels (image, text), one curve per loss, x = iteration; ``ylabel`` has a {} for
    the panel's name."""
    fig, axes = _figure(plt, 2, title)
    for ax, key, name in zip(axes, keys, ("image", "text"), strict=True):
        for loss, runs in logs.items():
            x, values = _series(runs, key, 0, max_epoch)
            if len(x):
                _band(ax, x, values, loss, colors[loss])
        ax.set(xlabel="iteration", ylabel=ylabel.format(name), **axis)
    return fig


def plot_experiment(logs: dict[str, list[Log]], out: Path, plot_epochs: int = 2) -> list[Path]:
    """Write grad_norms.png, vanishing.png and rsum.png into ``out``; return their paths."""
    plt = _pyplot()
    colors = dict(zip(logs, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    triplet = {loss: runs for loss, runs in logs.items() if "selhn" in loss or "hardest" in loss}
    figures = {
        "grad_norms.png": _per_step_figure(
            plt,
            logs,
            colors,
            ("grad_norm_image", "grad_norm_text"),
            f"Encoder gradient norm per iteration, first {plot_epochs} epoch(s), mean over seeds",
            plot_epochs,
            "{} encoder gradient norm",
            yscale="log",
        ),
        "vanishing.png": _per_step_figure(
            plt,
            triplet,
            colors,
            ("vanishing_i2t", "vanishing_t2i"),
            "Share of anchors in the vanishing regime (gap < epsilon)",
            None,
            "share of {} anchors",
            ylim=(-0.02, 1.02),
        ),
    }
    fig, axes = _figure(plt, 1, "Dev rSum per epoch, mean over seeds")
    for loss, runs in logs.items():
        x, values = _series(runs, "rsum", 1, None)
        _band(axes[0], x + 1, values, loss, colors[loss])
    axes[0].set(xlabel="epoch", ylabel="dev rSum")
    figures["rsum.png"] = fig
    paths = []
    for name, figure in figures.items():
        paths.append(out / name)
        _save(figure, paths[-1])
    plt.close("all")
    return paths
