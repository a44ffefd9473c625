"""Counting what a call dispatches: the number of operations that are not views, about the number of
kernels a GPU launches for them (at CNN sizes a launch costs more than its arithmetic).

    >>> import torch, diffstride
    >>> layer = diffstride.DiffStride(strides=2.0)
    >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
    >>> layer(x).sum().backward()  # the first call also fills the caches of constants
    >>> counts = count_operations(lambda: layer(x).sum().backward())
    >>> sum(counts.values()) <= 45  # the layer forward and backward (<= 40, tests/test_operations.py), the sum
    True

Counted on any device (the CPU included) with a ``TorchDispatchMode``: every ``aten`` call that
reaches the dispatcher below autograd, forward and backward, except views (``func.is_view``) and
the few operations that change only a tensor's metadata (``_unsafe_view``, in-place ``squeeze_``
and the like: they launch nothing).
"""
from __future__ import annotations

import collections
from typing import Callable, Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_operations"]


# operations that change a tensor's metadata and launch nothing: views in all but name
_METADATA_ONLY = {"_unsafe_view", "squeeze_", "unsqueeze_", "t_", "transpose_", "as_strided_", "detach_", "_reshape_alias"}


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in _METADATA_ONLY:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_operations(fn: Callable[[], object]) -> Counter[str]:
    """Runs ``fn()`` and returns how often it dispatched each non-view operation (autograd's
    backward included, if ``fn`` runs one), by operation name."""
    counter = _Counter()
    with counter:
        fn()
    return counter.counts
