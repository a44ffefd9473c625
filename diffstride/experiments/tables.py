"""The Markdown tables of the report (``results.md``): accuracy by pooling and strides, the
robustness analysis, learned strides, Pareto fronts at equal compute, shift consistency and budgets."""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional, Sequence

from diffstride.experiments.statistics import contrast, interval, pareto_front, t975

__all__ = ["results_table", "robustness_analysis", "strides_table", "configurations", "front_analysis",
           "shift_consistency_table", "budget_table", "format_strides"]


def format_strides(s) -> str:
    if isinstance(s, (list, tuple)):
        return "(" + ", ".join(format_strides(v) for v in s) + ")"
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


def _accuracies(runs, dataset, pooling, strides) -> List[float]:
    return [100 * r["metrics"]["test_accuracy"] for r in runs
            if (r["dataset"], r["pooling"], r["strides"]) == (dataset, pooling, strides)]


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
                cells.append(interval(*contrast([b, a], [1, -1])) if a and b else "–")
            lines.append(f"| {pool} | " + " | ".join(cells) + " |")
        if "strided conv" in poolings and "DiffStride" in poolings:
            lines += ["", "Interaction, the strided convolutions' drop minus DiffStride's (negative: DiffStride "
                      "loses less):", ""]
            for c in others:
                groups = [_accuracies(mine, dataset, p, s) for p in ("strided conv", "DiffStride") for s in (c, ref)]
                if all(groups):
                    lines.append(f"- strides {ref} → {c}: " + interval(*contrast(groups, [1, -1, -1, 1])))
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


def configurations(runs: Sequence[Dict], dataset: str) -> List[Dict]:
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
            f"{interval(*contrast([ours['accs'], theirs['accs']], [1, -1]))} |")


def front_analysis(runs: Sequence[Dict]) -> str:
    """Markdown, per dataset whose runs have several compute levels: each method's Pareto front,
    then, for each point of the other methods' fronts, DiffStride's best configuration at no more
    compute, and the difference of accuracies with its 95% Welch interval."""
    lines = []
    for dataset in sorted({r["dataset"] for r in runs}):
        configs = configurations(runs, dataset)
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
                d_acc = interval(*contrast([acc, other_acc], [1, -1]))
                d_shift = interval(*contrast([shift, other_shift], [1, -1])) if shift and other_shift else "-"
                lines.append(head + f"| {against} | {d_acc} | {d_shift} |")
    return "\n".join(lines) + "\n"
