r"""Shift consistency: how often a classifier keeps its prediction when its input moves.

The measure of Zhang, *Making Convolutional Networks Shift-Invariant Again* (ICML 2019), also
reported by adaptive polyphase sampling (Chaman & Dokmanić, CVPR 2021): for each example, draw two
random shifts of up to ``max_shift`` samples along every spatial axis (independently per axis and
per example, uniform on the integers ``-max_shift .. max_shift``), classify both shifted copies,
and count the examples whose top-1 predictions agree. The score is that fraction, in [0, 1].

Two ways of shifting, as in those papers:

- ``'circular'``: the input wraps around (``torch.roll``); nothing is lost, so a network that is
  exactly shift-invariant scores 1. Zhang's CIFAR protocol.
- ``'zeros'``: pad-and-crop: the input moves and the uncovered border is filled with zeros,
  what is pushed past the edge is lost (the output keeps the input's size). Closer to a camera
  that moves; even an ideal network can change its mind when content leaves the frame.

Every function works on (N, C, L), (N, C, H, W) and (N, C, D, H, W) batches alike, vectorised
(one gather per axis, no Python loop over examples).

    >>> import torch
    >>> from diffstride import metrics
    >>> x = torch.arange(5.0).reshape(1, 1, 5)
    >>> metrics.shift(x, torch.tensor([[2]]), mode="circular")
    tensor([[[3., 4., 0., 1., 2.]]])
    >>> metrics.shift(x, torch.tensor([[-1]]), mode="zeros")
    tensor([[[1., 2., 3., 4., 0.]]])
    >>> model = lambda x: x.mean(-1)                      # a circularly shift-invariant "classifier"
    >>> metrics.shift_consistency(model, torch.rand(8, 3, 16), max_shift=4)
    1.0
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

__all__ = ["MODES", "shift", "random_shifts", "agreement", "shift_consistency"]

MODES = ("circular", "zeros")


def _check(x: torch.Tensor, max_shift: int, mode: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4, 5):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"shift consistency needs a batch (N, C, L), (N, C, H, W) or (N, C, D, H, W), but got {shape}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an integer >= 0, but got {max_shift!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, but got {mode!r}")
    spatial = x.shape[2:]
    if mode == "circular" and any(max_shift >= size for size in spatial):
        raise ValueError(f"max_shift ({max_shift}) must be smaller than every spatial size {tuple(spatial)} "
                         "for circular shifts (a shift by the whole size is no shift)")


def shift(x: torch.Tensor, shifts: torch.Tensor, mode: str = "circular") -> torch.Tensor:
    """``x`` with example ``n`` moved by ``shifts[n]`` (one integer per spatial axis).

    A positive shift moves the content towards higher indices, as ``torch.roll``.

    Args:
        x: (N, C, *spatial) with 1 to 3 spatial axes.
        shifts: integer tensor (N, len(spatial)); ``|shift| <= size - 1`` per axis.
        mode: ``'circular'`` (wrap around) or ``'zeros'`` (pad with zeros, crop to the input's size).
    """
    spatial = tuple(x.shape[2:])
    if shifts.shape != (x.shape[0], len(spatial)):
        raise ValueError(f"shifts must have shape (N, {len(spatial)}) = {(x.shape[0], len(spatial))}, "
                         f"but got {tuple(shifts.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, but got {mode!r}")
    shifts = shifts.to(device=x.device, dtype=torch.long)
    m = int(shifts.abs().max()) if shifts.numel() else 0
    if m == 0:
        return x.clone()
    if any(m >= size for size in spatial):
        raise ValueError(f"a shift of {m} is not smaller than a spatial size {spatial}")
    pad = [m, m] * len(spatial)  # F.pad lists the last axis first; symmetric, so the order does not matter
    padded = F.pad(x, pad, mode="circular" if mode == "circular" else "constant")
    out = padded
    for axis, size in enumerate(spatial):
        dim = 2 + axis
        # output index i reads padded index i + m - s: the content moves by +s
        index = torch.arange(size, device=x.device) + m - shifts[:, axis:axis + 1]  # (N, size)
        view = [x.shape[0]] + [1] * (out.dim() - 1)
        view[dim] = size
        target = list(out.shape)
        target[dim] = size
        out = out.gather(dim, index.view(view).expand(target))
    return out


def random_shifts(n: int, ndim: int, max_shift: int, generator: Optional[torch.Generator] = None,
                  device=None) -> torch.Tensor:
    """(n, ndim) integers drawn uniformly from ``-max_shift .. max_shift``."""
    out = torch.randint(-max_shift, max_shift + 1, (n, ndim), generator=generator)
    return out.to(device) if device is not None else out


@torch.no_grad()
def agreement(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, max_shift: int,
              mode: str = "circular", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per example (bool, shape (N,)): do the top-1 predictions on two random shifts of it agree?"""
    _check(x, max_shift, mode)
    n, ndim = x.shape[0], x.dim() - 2
    first = shift(x, random_shifts(n, ndim, max_shift, generator), mode)
    second = shift(x, random_shifts(n, ndim, max_shift, generator), mode)
    predictions = model(torch.cat([first, second])).argmax(-1)
    return predictions[:n] == predictions[n:]


def shift_consistency(model: Callable[[torch.Tensor], torch.Tensor], inputs, max_shift: int,
                      mode: str = "circular", generator: Optional[torch.Generator] = None) -> float:
    """The fraction of examples whose predictions agree on two random shifts (see the module doc).

    Args:
        model: maps a batch to logits or probabilities (N, classes); called in no-grad mode (put
            it in ``eval()`` mode first).
        inputs: a batch tensor, or an iterable of batches (``(images, labels)`` pairs are accepted:
            the first element is used).
        max_shift: the largest shift, in samples, along each spatial axis.
        mode: ``'circular'`` or ``'zeros'``.
        generator: the source of the shifts (default: torch's global generator).
    """
    batches: Iterable = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    agree = total = 0
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        hits = agreement(model, batch, max_shift, mode, generator)
        agree += int(hits.sum())
        total += hits.numel()
    if total == 0:
        raise ValueError("shift consistency needs at least one example, but the inputs were empty")
    return agree / total
