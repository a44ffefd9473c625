r"""Reports on training runs: a results table and plots of the learned strides.

    python3 -m diffstride.examples.report WORKDIR [WORKDIR ...] --out DIR

Reads each run's ``metrics.json`` and ``history.json`` (written by ``diffstride.examples.train``)
and writes to ``DIR``:

- ``results.md``: test accuracy (%) mean ± std over runs (seeds), one row per pooling and one
  column per dataset and initial strides, as the reference's README table;
- ``strides.png``: each pooling layer's strides over training steps, one panel per run;
- ``accuracy.png``: train and test accuracy over steps, every run;
- ``output_sizes.png``: each pooling layer's output height over steps, one panel per run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

__all__ = ["load_run", "results_table", "write_report", "main"]


def load_run(workdir: str) -> Dict:
    """A run's final metrics and per-epoch history; a clear error when it is not a finished run."""
    paths = {name: os.path.join(workdir, f"{name}.json") for name in ("metrics", "history")}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"{workdir} is not a finished training run: {os.path.basename(path)} is missing")
    with open(paths["metrics"]) as f:
        metrics = json.load(f)
    with open(paths["history"]) as f:
        history = json.load(f)
    run = metrics.get("run", {})
    return {"workdir": workdir, "metrics": metrics, "history": history,
            "dataset": run.get("dataset", "?"), "pooling": run.get("pooling", "?"),
            "strides": ", ".join(_fmt_stride(s) for s in run.get("initial_strides", [])),
            "seed": run.get("seed")}


def _fmt_stride(s) -> str:
    if isinstance(s, (list, tuple)):
        return "(" + ", ".join(_fmt_stride(v) for v in s) + ")"
    return f"{s:g}" if isinstance(s, float) else str(s)


def results_table(runs: Sequence[Dict]) -> str:
    """Markdown: rows = pooling, columns = (dataset, initial strides), cells = mean ± std of test accuracy %."""
    columns = sorted({(r["dataset"], r["strides"]) for r in runs})
    rows = sorted({r["pooling"] for r in runs})
    lines = ["| pooling | " + " | ".join(f"{d}, strides {s}" for d, s in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for pool in rows:
        cells = []
        for dataset, strides in columns:
            accs = [100 * r["metrics"]["test_accuracy"] for r in runs
                    if (r["pooling"], r["dataset"], r["strides"]) == (pool, dataset, strides)]
            if not accs:
                cells.append("–")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.2f} (1 run)")
            else:
                cells.append(f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} ({len(accs)} runs)")
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(run: Dict) -> str:
    seed = f", seed {run['seed']}" if run["seed"] is not None else ""
    return f"{run['pooling']} / {run['dataset']} / {run['strides']}{seed}"


def _grid(n: int):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _per_layer_plot(runs, path, value, ylabel, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows, ncols = _grid(len(runs))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        steps = [h["step"] for h in run["history"]]
        layers = list(run["history"][-1].get("pooling", {})) if run["history"] else []
        for name in layers:
            for axis_index, axis in enumerate(("h", "w")):
                series = [value(h["pooling"].get(name, {}), axis_index) for h in run["history"]]
                if all(v is None for v in series):
                    continue
                ax.plot(steps, series, marker="o", markersize=3, linestyle="-" if axis == "h" else "--",
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


def _accuracy_plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _nth(values: Optional[List], index: int):
    return values[index] if values and len(values) > index else None


def write_report(workdirs: Sequence[str], out: str) -> List[str]:
    """Writes results.md and the PNG plots for ``workdirs`` into ``out``; returns the paths written."""
    runs = [load_run(w) for w in workdirs]
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("results.md", "strides.png", "accuracy.png", "output_sizes.png")}
    with open(paths["results.md"], "w") as f:
        f.write("Test accuracy (%), mean ± std over runs.\n\n" + results_table(runs))
    _per_layer_plot(runs, paths["strides.png"], lambda info, i: _nth(info.get("strides"), i), "stride",
                    "Strides of each pooling layer (solid: height, dashed: width)")
    _accuracy_plot(runs, paths["accuracy.png"])
    _per_layer_plot(runs, paths["output_sizes.png"], lambda info, i: _nth(info.get("output_size"), i),
                    "output size (pixels)", "Output size of each pooling layer (solid: height, dashed: width)")
    return list(paths.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m diffstride.examples.report", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="work directories of finished runs")
    parser.add_argument("--out", required=True, help="where to write results.md and the PNG plots")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.workdirs, args.out)
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
