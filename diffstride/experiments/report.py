r"""Reports on training runs: a results table and plots of the learned strides.

    python3 -m diffstride.experiments.report WORKDIR [WORKDIR ...] --out DIR

Reads each run's ``metrics.json`` and ``history.json`` (written by ``diffstride.train``)
and writes to ``DIR``:

- ``results.md``: test accuracy (%) mean ± std over runs (seeds), one row per pooling and one
  column per dataset and initial strides, as the reference's README table;
- ``strides.png``: each pooling layer's strides over training steps, one panel per run;
- ``accuracy.png``: train and test accuracy over steps, every run;
- ``output_sizes.png``: each pooling layer's output height over steps, one panel per run;
- ``accuracy_vs_macs.png``: final test accuracy against multiply-adds per example, every run;
- ``front.png``: each method's configurations (mean ± std over seeds) against multiply-adds, and
  its Pareto front.

With runs at several initial strides of one dataset, ``results.md`` also gives the robustness
analysis: the drop of each pooling's mean accuracy from the reference strides (``--reference_strides``,
default the first column) to each other strides, with a 95% Welch t-interval; the interaction (the
strided convolutions' drop minus DiffStride's) with its interval; and the learned strides (mean
over seeds) and final feature sizes of every pooling layer. With configurations at several
compute levels (fixed strides, complexity weights), each method's Pareto front (accuracy against
mean multiply-adds) and, for each point of another method's front, DiffStride's best configuration
at no more compute with the difference and its 95% Welch interval. Runs that measured shift
consistency (``train.train.shift_consistency``) get a table of it with 95% t-intervals. Runs
trained to a budget (``train.train.budget_macs``) get a table by budget: each budgeted method
against the fixed-stride networks of the same multiply-adds, with 95% Welch intervals.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

from diffstride.experiments.plots import accuracy_macs_plot, accuracy_plot, front_plot, nth, per_layer_plot
from diffstride.experiments.statistics import contrast, pareto_front, t975
from diffstride.experiments.tables import (budget_table, format_strides, front_analysis, results_table, robustness_analysis,
                                           shift_consistency_table, strides_table)

__all__ = ["load_run", "write_report", "main", "results_table", "robustness_analysis", "strides_table", "contrast",
           "t975", "pareto_front", "front_analysis", "shift_consistency_table", "budget_table"]


def load_run(workdir: str) -> Dict:
    """A run's final metrics and per-epoch history; a clear error when it is not a finished run."""
    paths = {name: os.path.join(workdir, f"{name}.json") for name in ("metrics", "history")}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"{workdir} is not a finished training run: {os.path.basename(path)} is missing")
    loaded = {}
    for name, path in paths.items():
        try:
            with open(path) as f:
                loaded[name] = json.load(f)
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); running the run's command again rebuilds it "
                             "from its newest checkpoint") from None
    metrics, history = loaded["metrics"], loaded["history"]
    if not isinstance(metrics, dict) or "test_accuracy" not in metrics or not isinstance(history, list):
        raise ValueError(f"{workdir} does not hold the records of a finished run (metrics.json without "
                         "test_accuracy, or history.json not a list)")
    run = metrics.get("run", {})
    pooling = run.get("pooling", "?")
    if pooling[-2:] in ("1d", "2d", "3d"):  # one row per method, whatever the dimensionality
        pooling = pooling[:-2]
    weight = run.get("complexity_weight") or 0.0
    budget = metrics.get("budget_macs")
    if budget:
        pooling += f" R={smoothness(workdir):g}"
    return {"workdir": workdir, "metrics": metrics, "history": history, "budget": budget,
            "dataset": run.get("dataset", "?"), "base_pooling": pooling, "complexity_weight": weight,
            "pooling": pooling + (f" (complexity weight {weight:g})" if weight else ""),
            "strides": ", ".join(format_strides(s) for s in run.get("initial_strides", [])),
            "seed": run.get("seed")}


def smoothness(workdir: str) -> float:
    """DiffStride's smoothness factor R in a run's operative configuration (4, the default, if unsaid)."""
    for name in ("operative_config.gin", "config.gin"):
        try:
            with open(os.path.join(workdir, name)) as f:
                for line in f:
                    key, _, value = line.partition("=")
                    if key.strip().endswith("DiffStride.smoothness_factor"):
                        return float(value.strip())
        except (OSError, ValueError):
            continue
    return 4.0


def write_report(workdirs: Sequence[str], out: str, reference_strides: Optional[str] = None,
                 log: Callable[[str], None] = print) -> List[str]:
    """Writes results.md and the PNG plots for ``workdirs`` into ``out``; returns the paths written.

    A work directory whose records are missing or damaged is left out, with a line through ``log``.

    ``reference_strides`` (e.g. ``'1, 2, 2'``) is the column the drops are measured from
    (default: the first initial strides met).
    """
    runs = []
    for workdir in workdirs:
        try:
            runs.append(load_run(workdir))
        except (OSError, ValueError) as err:  # a damaged run is left out, never the whole report
            log(f"report: left out {workdir}: {err}")
    if not runs:
        raise ValueError(f"none of the {len(workdirs)} work directories holds a finished run")
    os.makedirs(out, exist_ok=True)
    names = ("results.md", "strides.png", "accuracy.png", "output_sizes.png", "accuracy_vs_macs.png", "front.png")
    paths = {name: os.path.join(out, name) for name in names}
    with open(paths["results.md"], "w") as f:
        f.write("Test accuracy (%), mean ± std over runs.\n\n" + results_table(runs))
        analysis = robustness_analysis(runs, reference_strides)
        if analysis:
            f.write("\n" + analysis)
        fronts = front_analysis(runs)
        if fronts:
            f.write("\n" + fronts)
        budgets = budget_table(runs)
        if budgets:
            f.write("\nBy compute budget (train.train.budget_macs): each budgeted method against the fixed-stride "
                    "networks of the same multiply-adds (within 2%); differences budgeted − fixed with 95% Welch "
                    "intervals.\n\n" + budgets)
        shifts = shift_consistency_table(runs)
        if shifts:
            f.write("\nShift consistency: how often the top-1 prediction is the same on two random shifts of a test "
                    "example (diffstride.metrics).\n\n" + shifts)
        f.write("\nLearned strides and final feature sizes.\n\n" + strides_table(runs))
    accuracy_macs_plot(runs, paths["accuracy_vs_macs.png"])
    front_plot(runs, paths["front.png"])
    per_layer_plot(runs, paths["strides.png"], lambda info, i: nth(info.get("strides"), i), "stride",
                    "Strides of each pooling layer (one line per axis: l; h, w; d, h, w)")
    accuracy_plot(runs, paths["accuracy.png"])
    per_layer_plot(runs, paths["output_sizes.png"], lambda info, i: nth(info.get("output_size"), i),
                    "output size (samples)", "Output size of each pooling layer (one line per axis)")
    return list(paths.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m diffstride.experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="work directories of finished runs")
    parser.add_argument("--out", required=True, help="where to write results.md and the PNG plots")
    parser.add_argument("--reference_strides", default=None,
                        help="initial strides the drops are measured from, as in the table (e.g. '1, 2, 2')")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.workdirs, args.out, args.reference_strides,
                             log=lambda line: print(line, file=sys.stderr))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    return 0


def cli() -> None:
    """The ``diffstride-report`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
