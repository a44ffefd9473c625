"""The choice between the matrix form, the FFT form and the compact form: their costs in
multiply-adds, the operators' memory, and the device's own weights (:mod:`diffstride.settings`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from diffstride import settings
from diffstride._plans import SpectralPlan
from diffstride._validation import algorithm as check_algorithm

# The matrix form costs (multiply-adds per sample and channel) about
#   1-D: L·l            2-D: 2·h·H·W + 2·h·W·w
# and the FFT form about  n·log2(n) + m·log2(m)  (n, m: input and output pixels). 'auto' takes
# the FFT form when the matrix form's count exceeds the settings' weight times the FFT's, or when
# its operators would hold more elements than the input itself (memory stays linear in the
# input). The weights' calibration: benchmarks/algorithm.py and docs/speed.md.


def fft_cost_weight(size: Sequence[int]) -> float:
    """The weight of the FFT form's cost for spatial ``size`` (settings' ``fft_cost_weight_*``;
    3-D has only the FFT form)."""
    config = settings.current()
    if len(size) == 2 and all(n & (n - 1) == 0 for n in size):
        return config.fft_cost_weight_2d_power_of_two
    return config.fft_cost_weight_1d if len(size) == 1 else config.fft_cost_weight_2d


def matmul_cost(size: Sequence[int], out_size: Sequence[int]) -> float:
    """Multiply-adds per (sample, channel) of the matrix form (``inf`` in 3-D, where it does not exist)."""
    if len(size) == 1:
        return float(size[0] * out_size[0])
    if len(size) == 2:
        (height, width), (h, w) = size, out_size
        return float(2 * h * height * width + 2 * h * width * w)
    return math.inf


def fft_cost(size: Sequence[int], out_size: Sequence[int]) -> float:
    """Operation count per (sample, channel) of the FFT form, in the same units as :func:`matmul_cost`."""
    n, m = math.prod(size), math.prod(out_size)
    return n * math.log2(max(n, 2)) + m * math.log2(max(m, 2))


def operator_elements(size: Sequence[int], out_size: Sequence[int]) -> int:
    """Elements of the matrix form's operators (real and imaginary parts)."""
    return sum(2 * n * m for n, m in zip(size, out_size))


def autocast_off(device_type: str):
    """``torch.autocast(device_type, enabled=False)``, or nothing where autocast does not exist (meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def use_compact(x: torch.Tensor) -> bool:
    """Whether a call takes the compact form (:mod:`diffstride._compact`: few operations, plain
    autograd) rather than the cache-blocked kernels with explicit backwards: always off the CPU,
    inside ``torch.compile`` / ``torch.export``, on meta and fake tensors and under ``torch.func``
    transforms; on CPU when ``settings.cpu_blocked_kernels`` is off or the input is small enough
    for the call's overhead to matter (``settings.cpu_compact_max_bytes``)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not settings.current().cpu_blocked_kernels:
        return True
    if type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):  # fake / functorch / subclasses
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    return x.numel() * x.element_size() <= settings.current().cpu_compact_max_bytes


def choose_algorithm(x: torch.Tensor, plan: SpectralPlan, algorithm: str = "auto") -> str:
    """``'matmul'`` or ``'fft'`` for ``x`` (N, C, *spatial) and ``plan``: ``algorithm`` itself
    unless it is ``'auto'``, then the cheaper form by the cost model above."""
    if check_algorithm(algorithm) != "auto":
        return algorithm
    size, out_size = tuple(x.shape[2:]), plan.out_size
    if len(size) == 3:
        return "fft"
    if math.prod(size) <= settings.current().kronecker_max_pixels:
        return "matmul"
    input_elements = x.shape[0] * x.shape[1] * math.prod(size)
    if operator_elements(size, out_size) > input_elements:
        return "fft"
    weight = settings.current().fft_cost_weight_gpu if x.device.type != "cpu" else fft_cost_weight(size)
    return "fft" if matmul_cost(size, out_size) > weight * fft_cost(size, out_size) else "matmul"
