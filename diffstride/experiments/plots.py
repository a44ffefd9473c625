"""The PNG plots of the report (matplotlib, the ``report`` extra, imported by each plot): strides
and output sizes per layer over training, accuracy over steps, accuracy against multiply-adds and
each method's Pareto front."""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional

from diffstride.experiments.statistics import pareto_front
from diffstride.experiments.tables import configurations
from diffstride.train.logs import AXES

__all__ = ["accuracy_macs_plot", "front_plot", "per_layer_plot", "accuracy_plot", "nth"]


def _pyplot():
    """matplotlib's pyplot on the file backend (no display needed), imported by the first plot:
    matplotlib is the ``report`` extra, and the sweep imports this module without plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def nth(values: Optional[List], index: int):
    return values[index] if values and len(values) > index else None


def accuracy_macs_plot(runs, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"DiffStride": "o", "FixedSpectralPooling": "s", "strided conv": "^", "SpatialPooling": "D"}
    columns = list(dict.fromkeys(r["strides"] for r in runs))
    seen = set()
    for r in runs:
        key = (r["pooling"], r["strides"])
        color = f"C{columns.index(r['strides']) % 10}"
        filled = not r["complexity_weight"]
        label = f"{r['pooling']}, strides {r['strides']}" if key not in seen else None
        seen.add(key)
        ax.scatter(r["metrics"].get("flops", 0) / 1e6, 100 * r["metrics"]["test_accuracy"],
                   marker=markers.get(r["base_pooling"], "x"), s=60, label=label,
                   facecolors=color if filled else "none", edgecolors=color)
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per example (millions, at the final strides; log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy for compute: every run (hollow: trained with a complexity weight)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(run: Dict) -> str:
    seed = f", seed {run['seed']}" if run["seed"] is not None else ""
    return f"{run['pooling']} / {run['dataset']} / {run['strides']}{seed}"


def _grid(n: int):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


_LINESTYLES = ("-", "--", ":")


def per_layer_plot(runs, path, value, ylabel, title):
    plt = _pyplot()
    nrows, ncols = _grid(len(runs))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        steps = [h["step"] for h in run["history"]]
        layers = list(run["history"][-1].get("pooling", {})) if run["history"] else []
        for name in layers:
            # the axes by the layer's dimensionality: (l), (h, w) or (d, h, w)
            axes_names = AXES.get(len(run["history"][-1]["pooling"][name].get("strides", ())), ("h", "w"))
            for axis_index, axis in enumerate(axes_names):
                series = [value(h["pooling"].get(name, {}), axis_index) for h in run["history"]]
                if all(v is None for v in series):
                    continue
                ax.plot(steps, series, marker="o", markersize=3, linestyle=_LINESTYLES[axis_index],
                        label=f"{name} ({axis})")
        ax.set_title(_label(run), fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if layers:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no pooling layers", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_plot(runs, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        steps = [h["step"] for h in run["history"]]
        color = f"C{i % 10}"
        ax.plot(steps, [100 * h["train_accuracy"] for h in run["history"]], color=color, linestyle="--",
                label=f"{_label(run)} train")
        ax.plot(steps, [100 * h["test_accuracy"] for h in run["history"]], color=color, marker="o", markersize=3,
                label=f"{_label(run)} test")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Train (dashed) and test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Accuracy against compute: each method's Pareto front, and the comparison at equal compute


def front_plot(runs, path) -> None:
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(8 * len(datasets), 5.5), squeeze=False)
    markers = {"DiffStride": "o", "FixedSpectralPooling": "s", "strided conv": "^", "SpatialPooling": "D"}
    for ax, dataset in zip(axes[0], datasets):
        configs = configurations(runs, dataset)
        for i, method in enumerate(sorted({c["method"] for c in configs})):
            mine = [c for c in configs if c["method"] == method]
            for c in mine:
                spread = statistics.stdev(c["accs"]) if len(c["accs"]) > 1 else 0.0
                ax.errorbar(c["mmacs"], c["acc"], yerr=spread, fmt=markers.get(method, "x"), color=f"C{i}",
                            alpha=0.6, capsize=3)
            front = pareto_front(mine)
            ax.step([c["mmacs"] for c in front], [c["acc"] for c in front], where="post", color=f"C{i}",
                    label=f"{method} (front)")
        ax.set_xscale("log")
        ax.set_xlabel("multiply-adds per example (M, final strides)")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{dataset}: accuracy against compute")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
