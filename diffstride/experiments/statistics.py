"""The statistics of the report: 95% t-quantiles, Welch intervals of contrasts between groups of
runs, and Pareto fronts (accuracy against multiply-adds)."""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Sequence

__all__ = ["t975", "contrast", "interval", "pareto_front"]


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


def interval(estimate: float, half: float) -> str:
    return f"{estimate:+.2f} pp" + ("" if math.isnan(half) else f" [{estimate - half:+.2f}, {estimate + half:+.2f}]")


def pareto_front(configs: Sequence[Dict]) -> List[Dict]:
    """The configurations no other one beats at lower or equal compute (mean MACs) with a higher
    mean accuracy, sorted by compute."""
    front, best = [], -math.inf
    for c in sorted(configs, key=lambda c: (c["mmacs"], -c["acc"])):
        if c["acc"] > best:
            front.append(c)
            best = c["acc"]
    return front
