"""Optimizer, learning-rate schedules and loss with the reference's Keras semantics.

The reference's Gin configs name Keras objects (``@tf.keras.optimizers.SGD``,
``tf.keras.optimizers.schedules.PiecewiseConstantDecay``,
``tf.keras.losses.CategoricalCrossentropy``); :mod:`diffstride.train.configurables`
registers these classes under those names so the configs run unchanged.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence, Union

import torch

__all__ = ["PiecewiseConstantDecay", "CosineDecay", "SGD", "CategoricalCrossentropy"]


class PiecewiseConstantDecay:
    """Keras' ``PiecewiseConstantDecay``: ``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``.

    ``step`` counts optimizer updates from 0, as Keras' ``optimizer.iterations``.
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        boundaries, values = list(boundaries), [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"PiecewiseConstantDecay needs len(values) == len(boundaries) + 1, but got "
                             f"{len(values)} values for {len(boundaries)} boundaries")
        if boundaries != sorted(boundaries):
            raise ValueError(f"PiecewiseConstantDecay boundaries must increase, but got {boundaries}")
        self.boundaries, self.values = boundaries, values

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_left(self.boundaries, step)]

    def __repr__(self) -> str:
        return f"PiecewiseConstantDecay(boundaries={self.boundaries}, values={self.values})"


class CosineDecay:
    """Keras' ``CosineDecay``: from ``initial_learning_rate`` to ``alpha`` times it over ``decay_steps``."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0) -> None:
        if decay_steps <= 0:
            raise ValueError(f"CosineDecay needs decay_steps > 0, but got {decay_steps}")
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), int(decay_steps), alpha

    def __call__(self, step: int) -> float:
        progress = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)


Schedule = Union[float, PiecewiseConstantDecay, CosineDecay]


class SGD:
    """SGD with momentum, configured as Keras' (``learning_rate`` a number or a schedule of the step).

    :meth:`build` makes the ``torch.optim.SGD`` and :meth:`learning_rate_at` gives the rate the
    training loop sets before each update. (PyTorch's momentum buffer holds gradients where
    Keras' holds ``lr``-scaled steps: the two agree while the rate is constant and differ only
    transiently at a schedule boundary.)
    """

    def __init__(self, learning_rate: Schedule = 0.01, momentum: float = 0.0, nesterov: bool = False) -> None:
        if not callable(learning_rate) and (not math.isfinite(learning_rate) or learning_rate <= 0):
            raise ValueError(f"learning_rate must be > 0 or a schedule, but got {learning_rate!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), but got {momentum}")
        self.learning_rate, self.momentum, self.nesterov = learning_rate, momentum, nesterov

    def learning_rate_at(self, step: int) -> float:
        return float(self.learning_rate(step) if callable(self.learning_rate) else self.learning_rate)

    def build(self, param_groups: Iterable) -> torch.optim.SGD:
        return torch.optim.SGD(param_groups, lr=self.learning_rate_at(0), momentum=self.momentum, nesterov=self.nesterov)


class CategoricalCrossentropy:
    """Keras' ``CategoricalCrossentropy`` on one-hot (or mixed) labels, with label smoothing.

    ``from_logits=False`` takes probabilities (the reference's softmax output) and, as Keras,
    clips them to ``[1e-7, 1 - 1e-7]`` before the log; ``from_logits=True`` uses log-softmax.
    ``labels`` may also be class indices. Returns the batch mean.
    """

    EPSILON = 1e-7

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], but got {label_smoothing}")
        self.from_logits, self.label_smoothing = from_logits, float(label_smoothing)

    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        num_classes = outputs.shape[-1]
        if labels.dim() == 1:
            labels = torch.nn.functional.one_hot(labels, num_classes).to(outputs.dtype)
        labels = labels.to(torch.float32)
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        outputs = outputs.float()
        if self.from_logits:
            log_p = torch.log_softmax(outputs, dim=-1)
        else:
            probs = outputs / outputs.sum(dim=-1, keepdim=True)
            log_p = probs.clamp(self.EPSILON, 1.0 - self.EPSILON).log()
        return -(labels * log_p).sum(dim=-1).mean()
