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
import math
import os
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence

from diffstride.train.logs import AXES

__all__ = ["load_run", "results_table", "robustness_analysis", "strides_table", "contrast", "t975", "write_report",
           "pareto_front", "front_analysis", "shift_consistency_table", "budget_table", "main"]


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
        pooling += f" R={_smoothness(workdir):g}"
    return {"workdir": workdir, "metrics": metrics, "history": history, "budget": budget,
            "dataset": run.get("dataset", "?"), "base_pooling": pooling, "complexity_weight": weight,
            "pooling": pooling + (f" (complexity weight {weight:g})" if weight else ""),
            "strides": ", ".join(_fmt_stride(s) for s in run.get("initial_strides", [])),
            "seed": run.get("seed")}


def _smoothness(workdir: str) -> float:
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
            accs = _accuracies(runs, dataset, pool, strides)
            if not accs:
                cells.append("–")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.2f} (1 run)")
            else:
                cells.append(f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} ({len(accs)} runs)")
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; above 30, the normal's
# 1.96 (within 4% of t). Non-integer Welch degrees of freedom are rounded down (conservative).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (rounded down)."""
    if not df >= 1:
        return math.inf
    return _T975[int(df) - 1] if df < 31 else 1.96


def contrast(groups: Sequence[Sequence[float]], weights: Sequence[float]):
    """``Σ w_i · mean_i`` with its 95% Welch interval: ``(estimate, half_width)``.

    The standard error is ``sqrt(Σ w_i² s_i² / n_i)``, the degrees of freedom Welch-Satterthwaite's.
    Every group needs two or more values; otherwise the half-width is NaN.
    """
    estimate = sum(w * statistics.mean(g) for g, w in zip(groups, weights))
    if any(len(g) < 2 for g in groups):
        return estimate, math.nan
    terms = [w * w * statistics.variance(g) / len(g) for g, w in zip(groups, weights)]
    se2 = sum(terms)
    if se2 == 0:
        return estimate, 0.0
    df = se2 ** 2 / sum(t * t / (len(g) - 1) for t, g in zip(terms, groups))
    return estimate, t975(df) * math.sqrt(se2)


def _accuracies(runs, dataset, pooling, strides) -> List[float]:
    return [100 * r["metrics"]["test_accuracy"] for r in runs
            if (r["dataset"], r["pooling"], r["strides"]) == (dataset, pooling, strides)]


def _interval(estimate: float, half: float) -> str:
    return f"{estimate:+.2f} pp" + ("" if math.isnan(half) else f" [{estimate - half:+.2f}, {estimate + half:+.2f}]")


def robustness_analysis(runs: Sequence[Dict], reference_strides: Optional[str] = None) -> str:
    """Markdown: per dataset with several initial strides, the drops from the reference strides
    with 95% intervals, and the interaction (strided conv's drop minus DiffStride's)."""
    lines = []
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = [r for r in runs if r["dataset"] == dataset]
        columns = list(dict.fromkeys(r["strides"] for r in mine))
        if len(columns) < 2:
            continue
        ref = reference_strides if reference_strides in columns else columns[0]
        others = [c for c in columns if c != ref]
        lines += [f"### {dataset}: drop from strides {ref} (mean, 95% Welch interval)", "",
                  "| pooling | " + " | ".join(f"→ strides {c}" for c in others) + " |",
                  "|---|" + "---|" * len(others)]
        poolings = sorted({r["pooling"] for r in mine})
        for pool in poolings:
            cells = []
            for c in others:
                a, b = _accuracies(mine, dataset, pool, ref), _accuracies(mine, dataset, pool, c)
                cells.append(_interval(*contrast([b, a], [1, -1])) if a and b else "–")
            lines.append(f"| {pool} | " + " | ".join(cells) + " |")
        if "strided conv" in poolings and "DiffStride" in poolings:
            lines += ["", "Interaction, the strided convolutions' drop minus DiffStride's (negative: DiffStride "
                      "loses less):", ""]
            for c in others:
                groups = [_accuracies(mine, dataset, p, s) for p in ("strided conv", "DiffStride") for s in (c, ref)]
                if all(groups):
                    lines.append(f"- strides {ref} → {c}: " + _interval(*contrast(groups, [1, -1, -1, 1])))
        lines.append("")
    return "\n".join(lines)


def strides_table(runs: Sequence[Dict]) -> str:
    """Markdown: per (dataset, pooling, initial strides), each pooling layer's learned strides
    (mean over runs) and final output size, and the MACs per example."""
    lines = ["| dataset | pooling | initial strides | runs | learned strides (mean over runs) | output sizes (first run) | M MACs (mean) |",
             "|---|---|---|---:|---|---|---:|"]
    keys = sorted({(r["dataset"], r["pooling"], r["strides"]) for r in runs})
    for dataset, pool, strides in keys:
        group = [r for r in runs if (r["dataset"], r["pooling"], r["strides"]) == (dataset, pool, strides)]
        # forward order: the stem first (metrics.json stores the layers sorted by name)
        layers = sorted(group[0]["metrics"].get("pooling", {}), key=lambda n: (not n.startswith("stem"), n))
        learned, sizes = [], []
        for name in layers:
            values = [r["metrics"]["pooling"][name]["strides"] for r in group if name in r["metrics"]["pooling"]]
            mean = [statistics.mean(v[i] for v in values) for i in range(len(values[0]))]
            learned.append(f"{name} (" + ", ".join(f"{v:.2f}" for v in mean) + ")")
            out = group[0]["metrics"]["pooling"][name].get("output_size") or []
            sizes.append("x".join(str(v) for v in out) or "?")
        macs = statistics.mean(r["metrics"].get("flops", 0) for r in group) / 1e6
        lines.append(f"| {dataset} | {pool} | {strides} | {len(group)} | {'; '.join(learned) or '–'} | "
                     f"{', '.join(sizes) or '–'} | {macs:.1f} |")
    return "\n".join(lines) + "\n"


def _accuracy_macs_plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ----------------------------------------------------------------------------------------------
# Accuracy against compute: each method's Pareto front, and the comparison at equal compute


def _configurations(runs: Sequence[Dict], dataset: str) -> List[Dict]:
    """One entry per (pooling, complexity weight, initial strides) of ``dataset``: the method, the
    seeds' accuracies (%) and MACs, and their means."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in runs:
        if r["dataset"] == dataset:
            groups.setdefault((r["pooling"], r["strides"]), []).append(r)
    out = []
    for (label, strides), group in sorted(groups.items()):
        accs = [100 * r["metrics"]["test_accuracy"] for r in group]
        macs = [r["metrics"].get("flops", 0) / 1e6 for r in group]
        out.append({"method": group[0]["base_pooling"] if group[0]["base_pooling"] != "?" else label,
                    "label": f"{label}, strides {strides}", "accs": accs, "macs": macs,
                    "acc": statistics.mean(accs), "mmacs": statistics.mean(macs)})
    return out


def pareto_front(configs: Sequence[Dict]) -> List[Dict]:
    """The configurations no other one beats at lower or equal compute (mean MACs) with a higher
    mean accuracy, sorted by compute."""
    front, best = [], -math.inf
    for c in sorted(configs, key=lambda c: (c["mmacs"], -c["acc"])):
        if c["acc"] > best:
            front.append(c)
            best = c["acc"]
    return front


def _best_at_most(configs: Sequence[Dict], method: str, mmacs: float) -> Optional[Dict]:
    """``method``'s most accurate configuration at no more than ``mmacs`` (None if it has none)."""
    cheaper = [c for c in configs if c["method"] == method and c["mmacs"] <= mmacs]
    return max(cheaper, key=lambda c: c["acc"]) if cheaper else None


def _equal_compute_row(configs, method: str, point: Dict, against: str, missing: str, ours_first=False) -> str:
    """A row: ``method``'s ``point``, ``against``'s best at no more compute, and the difference
    DiffStride minus the other with its 95% Welch interval."""
    best = _best_at_most(configs, against, point["mmacs"])
    head = f"| {point['label']} | {point['mmacs']:.1f} | {against} |" if ours_first else \
        f"| {method} | {point['label']} | {point['mmacs']:.1f} |"
    if best is None:
        return f"{head} {missing} | | |"
    ours, theirs = (point, best) if ours_first else (best, point)
    return (f"{head} {best['label']} | {best['mmacs']:.1f} | "
            f"{_interval(*contrast([ours['accs'], theirs['accs']], [1, -1]))} |")


def front_analysis(runs: Sequence[Dict]) -> str:
    """Markdown, per dataset whose runs have several compute levels: each method's Pareto front,
    then, for each point of the other methods' fronts, DiffStride's best configuration at no more
    compute, and the difference of accuracies with its 95% Welch interval."""
    lines = []
    for dataset in sorted({r["dataset"] for r in runs}):
        configs = _configurations(runs, dataset)
        methods = sorted({c["method"] for c in configs})
        if len(configs) < 3 or "DiffStride" not in methods or len(methods) < 2:
            continue
        fronts = {m: pareto_front([c for c in configs if c["method"] == m]) for m in methods}
        lines += [f"### {dataset}: accuracy against compute (each method's Pareto front)", "",
                  "| method | configuration | runs | M MACs (mean) | test accuracy % (mean ± std) |",
                  "|---|---|---:|---:|---|"]
        for m in methods:
            for c in fronts[m]:
                spread = f" ± {statistics.stdev(c['accs']):.2f}" if len(c["accs"]) > 1 else ""
                lines.append(f"| {m} | {c['label']} | {len(c['accs'])} | {c['mmacs']:.1f} | {c['acc']:.2f}{spread} |")
        lines += ["", "At equal compute: for each point of another method's front, DiffStride's most accurate "
                  "configuration (of all its runs) at no more multiply-adds, and the difference (DiffStride minus "
                  "the other; 95% Welch interval; the choice of the best configuration favours DiffStride "
                  "slightly):", "",
                  "| other method | its configuration | M MACs | DiffStride at ≤ that compute | M MACs | difference |",
                  "|---|---|---:|---|---:|---|"]
        others = [m for m in methods if m != "DiffStride"]
        points = [(m, c) for m in others for c in fronts[m]]
        lines += [_equal_compute_row(configs, m, c, "DiffStride", "none (DiffStride's runs all cost more)")
                  for m, c in points]
        compared = sum(bool(_best_at_most(configs, "DiffStride", c["mmacs"])) for _, c in points)
        lines += ["", "And the other way: for each point of DiffStride's front, each other method's most accurate "
                  "configuration at no more multiply-adds (difference: DiffStride minus the other):", "",
                  "| DiffStride configuration | M MACs | other method | its best at ≤ that compute | M MACs | difference |",
                  "|---|---:|---|---|---:|---|"]
        for d in fronts["DiffStride"]:
            for m in others:
                lines.append(_equal_compute_row(configs, "DiffStride", d, m, "none at that compute", ours_first=True))
                compared += bool(_best_at_most(configs, m, d["mmacs"]))
        if not compared:
            lines += ["", "The fronts do not overlap: no comparison at equal compute is possible from these runs."]
        lines.append("")
    return "\n".join(lines)


def shift_consistency_table(runs: Sequence[Dict]) -> str:
    """Markdown: shift consistency (%) per (dataset, pooling, initial strides), mean with its 95%
    t-interval over runs; empty when no run measured it."""
    measured = [r for r in runs if "shift_consistency" in r["metrics"]]
    if not measured:
        return ""
    lines = ["| dataset | pooling | initial strides | runs | shift consistency % (mean, 95% interval) | test accuracy % |",
             "|---|---|---|---:|---|---|"]
    for dataset, pool, strides in sorted({(r["dataset"], r["pooling"], r["strides"]) for r in measured}):
        group = [r for r in measured if (r["dataset"], r["pooling"], r["strides"]) == (dataset, pool, strides)]
        values = [100 * r["metrics"]["shift_consistency"] for r in group]
        mean = statistics.mean(values)
        if len(values) > 1:
            half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
            cell = f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"
        else:
            cell = f"{mean:.2f}"
        acc = statistics.mean(100 * r["metrics"]["test_accuracy"] for r in group)
        lines.append(f"| {dataset} | {pool} | {strides} | {len(group)} | {cell} | {acc:.2f} |")
    return "\n".join(lines) + "\n"


def _front_plot(runs, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(8 * len(datasets), 5.5), squeeze=False)
    markers = {"DiffStride": "o", "FixedSpectralPooling": "s", "strided conv": "^", "SpatialPooling": "D"}
    for ax, dataset in zip(axes[0], datasets):
        configs = _configurations(runs, dataset)
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


def _nth(values: Optional[List], index: int):
    return values[index] if values and len(values) > index else None


def budget_table(runs: Sequence[Dict], tolerance: float = 0.02) -> str:
    """Markdown, for runs trained to a budget (``train.train.budget_macs``): per budget, each
    budgeted method's accuracy and shift consistency (mean ± std over seeds) and the multiply-adds
    it ended at, against every fixed-stride configuration whose mean multiply-adds equal the budget
    (within ``tolerance``): the differences with 95% Welch intervals. Empty without budget runs."""
    budgeted = [r for r in runs if r.get("budget")]
    if not budgeted:
        return ""
    fixed = {}
    for r in runs:
        if not r.get("budget") and not r["complexity_weight"]:
            fixed.setdefault((r["base_pooling"], r["strides"]), []).append(r)

    def stats(group, key):
        values = [100 * r["metrics"][key] for r in group if key in r["metrics"]]
        if not values:
            return values, "-"
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return values, f"{statistics.mean(values):.2f}{spread}"

    lines = ["| budget (M MACs) | method | runs | ended at (M MACs) | accuracy % | shift consistency % "
             "| against (same MACs) | accuracy difference | shift consistency difference |",
             "|---:|---|---:|---:|---|---|---|---|---|"]
    methods = sorted({r["pooling"] for r in budgeted})
    for budget in sorted({r["budget"] for r in budgeted}, reverse=True):
        peers = [(name, group) for name, group in sorted(fixed.items())
                 if abs(statistics.mean(r["metrics"]["flops"] for r in group) / budget - 1) <= tolerance]
        for method in methods:
            group = [r for r in budgeted if r["budget"] == budget and r["pooling"] == method]
            if not group:
                continue
            acc, acc_text = stats(group, "test_accuracy")
            shift, shift_text = stats(group, "shift_consistency")
            ended = statistics.mean(r["metrics"]["flops"] for r in group) / 1e6
            head = f"| {budget / 1e6:.2f} | {method} | {len(group)} | {ended:.2f} | {acc_text} | {shift_text} "
            if not peers:
                lines.append(head + "| none | | |")
            for (pooling, strides), other in peers:
                other_acc, _ = stats(other, "test_accuracy")
                other_shift, _ = stats(other, "shift_consistency")
                against = f"{'strided' if pooling == 'None' else pooling} ({strides}), {len(other)} runs"
                d_acc = _interval(*contrast([acc, other_acc], [1, -1]))
                d_shift = _interval(*contrast([shift, other_shift], [1, -1])) if shift and other_shift else "-"
                lines.append(head + f"| {against} | {d_acc} | {d_shift} |")
    return "\n".join(lines) + "\n"


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
    _accuracy_macs_plot(runs, paths["accuracy_vs_macs.png"])
    _front_plot(runs, paths["front.png"])
    _per_layer_plot(runs, paths["strides.png"], lambda info, i: _nth(info.get("strides"), i), "stride",
                    "Strides of each pooling layer (one line per axis: l; h, w; d, h, w)")
    _accuracy_plot(runs, paths["accuracy.png"])
    _per_layer_plot(runs, paths["output_sizes.png"], lambda info, i: _nth(info.get("output_size"), i),
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
