"""Figures of a loss comparison, from the trainer's logs (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

Log = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (step records, eval records)


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ValueError("plots need matplotlib: pip install 'selhn[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(logs: list[Log], key: str, kind: int, max_epoch: int | None) -> tuple[np.ndarray, ...]:
    """x values and the (seeds, x) matrix of ``key``, over the x that every seed logged."""
    per_seed = []
    for log in logs:
        records = [
            r for r in log[kind] if key in r and (max_epoch is None or r["epoch"] < max_epoch)
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


def plot_experiment(logs: dict[str, list[Log]], out: Path, plot_epochs: int = 2) -> list[Path]:
    """Write grad_norms.png, vanishing.png and rsum.png into ``out``; return their paths."""
    plt = _pyplot()
    colors = dict(zip(logs, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    paths = []

    fig, axes = _figure(
        plt,
        2,
        f"Encoder gradient norm per iteration, first {plot_epochs} epoch(s), mean over seeds",
    )
    for ax, key, name in zip(
        axes, ("grad_norm_image", "grad_norm_text"), ("image", "text"), strict=True
    ):
        for loss, runs in logs.items():
            x, values = _series(runs, key, 0, plot_epochs)
            if len(x):
                _band(ax, x, values, loss, colors[loss])
        ax.set(yscale="log", xlabel="iteration", ylabel=f"{name} encoder gradient norm")
    paths.append(out / "grad_norms.png")
    _save(fig, paths[-1])

    fig, axes = _figure(plt, 2, "Share of anchors in the vanishing regime (gap < epsilon)")
    for ax, key, name in zip(
        axes, ("vanishing_i2t", "vanishing_t2i"), ("image", "text"), strict=True
    ):
        for loss, runs in logs.items():
            if "selhn" in loss or "hardest" in loss:
                x, values = _series(runs, key, 0, None)
                if len(x):
                    _band(ax, x, values, loss, colors[loss])
        ax.set(ylim=(-0.02, 1.02), xlabel="iteration", ylabel=f"share of {name} anchors")
    paths.append(out / "vanishing.png")
    _save(fig, paths[-1])

    fig, axes = _figure(plt, 1, "Dev rSum per epoch, mean over seeds")
    for loss, runs in logs.items():
        x, values = _series(runs, "rsum", 1, None)
        _band(axes[0], x + 1, values, loss, colors[loss])
    axes[0].set(xlabel="epoch", ylabel="dev rSum")
    paths.append(out / "rsum.png")
    _save(fig, paths[-1])
    plt.close("all")
    return paths
