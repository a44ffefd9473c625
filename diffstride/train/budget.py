"""``train.train.budget_macs``: a network trained to end within a number of multiply-adds per
example (:class:`Budget`), refused before training when the budget is below its floor."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
from torch import nn

from diffstride import pooling
from diffstride.complexity import budget_penalty, fit_to_budget, floor
from diffstride.train.run_state import TrainingSetup

__all__ = ["Budget", "budget_for"]


@dataclasses.dataclass
class Budget:
    """``train.train.budget_macs``: the network must end within ``macs`` multiply-adds per example.

    The complexity term becomes ``weight · relu(log(M / macs))`` (:func:`diffstride.complexity.budget_penalty`,
    ``M`` the count as a differentiable function of the strides, scaled to the exact count, which is
    refreshed every ``refresh_steps`` steps): it pushes the strides up only while the network is
    over budget, with a gradient that does not vanish as they grow. Every ``refresh_steps`` steps
    and at every epoch's end (before evaluation), a network over budget has its strides scaled by
    the least common factor that brings the exact count within it
    (:func:`diffstride.complexity.fit_to_budget`): training moves within the budget (a projected
    gradient method), and every evaluated and saved network meets it.
    """

    macs: int
    floor: int
    weight: float
    input_size: Tuple[int, ...]
    exact: float = 0.0
    refresh_steps: int = 10

    def penalty(self, run: TrainingSetup) -> torch.Tensor:
        return self.weight * budget_penalty(run.model, run.structure, self.macs, self.exact)

    def fit(self, run: TrainingSetup) -> None:
        """The exact count, the network projected back within the budget first if it is over."""
        self.exact = float(fit_to_budget(run.model, self.input_size, self.macs)[0])


def budget_for(model: nn.Module, input_size, budget_macs: Optional[int], complexity_weight: float) -> Optional[Budget]:
    """The run's budget, refused before training when below the network's floor."""
    if budget_macs is None:
        return None
    pools = [m for _, m in pooling.pooling_layers(model) if getattr(m, "trainable", False)]
    if not pools:
        raise ValueError(f"train.train.budget_macs = {budget_macs} needs trainable strides (DiffStride layers); "
                         "this network has none")
    lowest = floor(model, input_size)
    if budget_macs < lowest:
        smoothness = sorted({m.smoothness_factor for m in pools})
        raise ValueError(
            f"train.train.budget_macs = {budget_macs} is below this network's floor of {lowest} multiply-adds per "
            f"example ({lowest / 1e6:.3g} M: every DiffStride stride at its upper limit, each output still keeping "
            f"about size/S + 2R samples per axis, R = smoothness_factor = {smoothness}). Lower the floor with a "
            f"smaller pooling.DiffStride.smoothness_factor, a higher upper_limit_stride (if set), or a smaller "
            f"network, or raise the budget")
    return Budget(int(budget_macs), lowest, complexity_weight if complexity_weight > 0 else 1.0, tuple(input_size))
