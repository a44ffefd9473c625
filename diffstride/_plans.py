"""Plans of spectral downsampling: which frequencies are kept and the output size, as Python ints.

Computed from the stride values in Python, emulating the reference's float32 arithmetic exactly
(:func:`_f32`), so that an output size is never the result of a data-dependent ``nonzero`` and a
frozen layer's shapes are static. Pure Python: no tensors. What depends only on sizes is cached
(:func:`cached_when_eager`): a layer plans at every call.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Optional, Sequence, Tuple

import torch

_FAKE = torch._C._TorchDispatchModeKey.FAKE


def cached_when_eager(fn):
    """``fn`` (hashable arguments, an immutable result) with an LRU cache, bypassed while
    ``torch.compile`` traces (the graph then folds the computation itself) and under a fake tensor
    mode (its tensors must not be cached, nor real ones returned to it)."""
    cached = functools.lru_cache(maxsize=1024)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        if torch.compiler.is_compiling() or torch._C._get_dispatch_mode(_FAKE) is not None:
            return fn(*args)
        return cached(*args)

    wrapper.cache_clear = cached.cache_clear
    return wrapper


def is_exporting() -> bool:
    """Whether ``torch.export`` is tracing (``torch.compiler.is_exporting``, where this torch has it)."""
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check is not None and check())


def spatial_size(x: "torch.Tensor") -> Tuple[int, ...]:
    """The spatial size of a (N, C, *spatial) tensor as Python ints. A plan depends on the exact
    size: inside a graph traced with dynamic shapes, ``operator.index`` specialises each symbol to
    its value (a guard: another size recompiles), where ``int()`` would keep it symbolic."""
    return tuple(operator.index(n) for n in x.shape[2:])


def memory_format_of(x: "torch.Tensor") -> "torch.memory_format":
    """The memory format of a (N, C, *spatial) tensor: ``channels_last`` (4-D) and
    ``channels_last_3d`` (5-D) when the tensor is laid out so and not also contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


@cached_when_eager
def kept_runs(rows: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
    """The kept bins of a centred axis as ``(start, stop)`` runs of consecutive bins (a centred
    axis keeps two: the low positive and the low negative frequencies)."""
    runs = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1][1] = r + 1
        else:
            runs.append([r, r + 1])
    return tuple((start, stop) for start, stop in runs)


def _f32(value: float) -> float:
    """Rounds a Python float to the nearest float32 (round half to even).

    Exact for the normal float32 range used here; every +, -, * and / of two float32 values
    computed in float64 and rounded by this function equals the float32 operation. Pure
    arithmetic, so that ``torch.compile`` can fold it into a constant.
    """
    if value == 0.0 or not math.isfinite(value):
        return value
    mantissa, exponent = math.frexp(value)
    return math.ldexp(round(mantissa * 16777216.0) / 16777216.0, exponent)


# --------------------------------------------------------------------------------------------
# Plans: which frequencies are kept, and the output size (Python ints).


@dataclasses.dataclass(frozen=True)
class SpectralPlan:
    """What a spectral layer keeps of one input size.

    Attributes:
        rows: kept FFT rows (height bins, in FFT order) of the input, in the order in which
            they are laid out in the output spectrum. Empty for 1-D plans.
        depth_rows: the same for the depth axis of 3-D plans (empty otherwise).
        cols: number of kept rfft bins along the width (bins ``0 .. cols - 1``).
        out_size: output spatial size, ``(h, w)`` in 2-D or ``(l,)`` in 1-D.
    """

    rows: Tuple[int, ...]
    cols: int
    out_size: Tuple[int, ...]
    depth_rows: Tuple[int, ...] = ()  # 3-D only: kept bins of the depth axis (FFT order)
    #: DiffStride plans, what the stride values planned from let the compact form skip (True
    #: when unknown): the stride rule (the in-place clamp's floors and the limits' clip) acts, i.e.
    #: some value is below its floor or outside the limits (else value and gradient are the identity)
    stride_rule_acts: bool = True
    #: ... and the mask's ``max(size / S, 2)`` acts (some ``size / S <= 2``).
    crop_floor_acts: bool = True

    def centred_rows(self) -> Tuple[Tuple[int, ...], ...]:
        """Kept bins of every centred (complex-FFT) axis, outermost first: () in 1-D, (rows,) in
        2-D, (depth_rows, rows) in 3-D."""
        return tuple(r for r in (self.depth_rows, self.rows) if r) if len(self.out_size) > 1 else ()


@cached_when_eager
def height_positions(height: int) -> Tuple[int, ...]:
    """Mask positions of the FFT rows of a ``height``-long axis, exactly as the reference builds them.

    ``r = arange(H//2 + H%2)``; ``pos = fftshift(cat(flip(r[H%2:]), r))``. H = 8 gives
    ``[0, 1, 2, 3, 3, 2, 1, 0]``; H = 31 gives ``[1, 2, ..., 15, 15, 14, ..., 1, 0]``.
    """
    r = list(range(height // 2 + height % 2))
    unshifted = list(reversed(r[height % 2:])) + r
    shift = height // 2  # fftshift rolls by n // 2
    return tuple(unshifted[(i - shift) % height] for i in range(height))


@cached_when_eager
def min_stride(size: int, smoothness_factor: float) -> float:
    """The smallest stride the reference allows along an axis: ``size / (size - R)`` in float32."""
    return _f32(size / _f32(size - _f32(smoothness_factor)))


def _f64(value: float) -> float:
    return value


# --------------------------------------------------------------------------------------------
# The stride rule: the strides the mask sees.
#
# ``S_eff = clip(max(S, size / (size - R)), lower or 1, upper)`` per axis, a shared stride taking
# the largest floor of its axes. It is evaluated in two arithmetics, from the same pieces
# (:func:`clamp_floors`, :func:`stride_limits`): here in Python (float32 emulated), to plan the
# output size without reading a tensor inside a graph, and in ``functional._mask_strides`` on
# the strides tensor, where the gradient must follow TensorFlow's rules at the bounds (the value
# clamp passes the gradient through; the clip passes it at the bounds included). A test
# (tests/test_oracle.py) checks that both give the same values.


def clamp_floors(size: Sequence[int], smoothness_factor: float, shared: bool) -> Tuple[float, ...]:
    """The reference's in-place clamp floors ``size / (size - R)``, one per axis (one, the largest,
    for a shared stride)."""
    return _clamp_floors(tuple(size), smoothness_factor, shared)


@cached_when_eager
def _clamp_floors(size: Tuple[int, ...], smoothness_factor: float, shared: bool) -> Tuple[float, ...]:
    floors = tuple(min_stride(n, smoothness_factor) for n in size)
    return (max(floors),) if shared else floors


def stride_limits(lower: Optional[float], upper: Optional[float], rnd=_f32) -> Tuple[float, Optional[float]]:
    """The clip's bounds as the mask's dtype rounds them: ``lower`` defaults to 1, ``upper`` to none."""
    return (1.0 if lower is None else rnd(lower)), (None if upper is None else rnd(upper))


def effective_strides(
    values: Sequence[float],
    size: Sequence[int],
    smoothness_factor: float = 4.0,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    float64: bool = False,
) -> Tuple[float, ...]:
    """The strides the mask sees, one per spatial axis, from the stride values (one shared value
    or one per axis) of an input of spatial ``size``: the in-place clamp, then the limits' clip."""
    low, high = stride_limits(lower_limit_stride, upper_limit_stride, _f64 if float64 else _f32)
    floors = clamp_floors(size, smoothness_factor, shared=len(values) == 1)
    result = []
    for value, floor in zip(values, floors):
        s = max(value, floor, low)
        result.append(s if high is None else min(s, high))
    return tuple(result) * len(size) if len(values) == 1 else tuple(result)


def _threshold(size: int, stride: float, width_rule: bool, rnd=_f32) -> float:
    """``max(size / stride, 2) / 2`` (+1 for the rfft axis), rounded as the mask's dtype (float32 in the reference)."""
    cropped = max(rnd(size / stride), 2.0)
    threshold = cropped / 2.0  # exact
    return rnd(threshold + 1.0) if width_rule else threshold


def _kept(positions: Sequence[int], threshold: float, smoothness_factor: float, rnd=_f32) -> Sequence[int]:
    """Indices whose mask ``(1/R) * (R + t - pos)`` is > 0 in the mask's arithmetic."""
    edge = rnd(rnd(smoothness_factor) + threshold)
    # (1/R) * (edge - pos) > 0 exactly when edge > pos: both factors are positive and the
    # product of two positive float32 values of this size cannot underflow.
    if isinstance(positions, range) and positions.start == 0 and positions.step == 1:
        # the rfft axis: positions 0 .. n-1 are their indices; the integers below ``edge`` (exact:
        # ``edge`` is a float32 value and the positions integers below 2^24), without a Python loop
        return range(min(len(positions), max(0, math.ceil(edge))))
    return [i for i, pos in enumerate(positions) if edge - pos > 0]


def _plan(kept: Sequence[Tuple[int, ...]], cols: int, width: int, **flags) -> SpectralPlan:
    """A plan from the kept bins of the centred axes (outermost first), the kept rfft bins and the
    output width."""
    return SpectralPlan(kept[-1] if kept else (), cols, tuple(len(k) for k in kept) + (width,),
                        depth_rows=kept[0] if len(kept) == 2 else (), **flags)


def _diffstride_plan_nd(size, strides, smoothness_factor, cropping, lower, upper, float64) -> SpectralPlan:
    """DiffStride's plan in any dimensionality: every axis but the last follows the height rule
    (centred positions), the last the rfft rule; ``strides`` one shared value or one per axis."""
    rnd = _f64 if float64 else _f32
    effective = effective_strides(strides, size, smoothness_factor, lower, upper, float64)
    *centred, width = size
    if cropping:
        kept = [tuple(_kept(height_positions(n), _threshold(n, s, False, rnd), smoothness_factor, rnd))
                for n, s in zip(centred, effective)]
        cols = len(_kept(range(width // 2 + 1), _threshold(width, effective[-1], True, rnd), smoothness_factor, rnd))
    else:
        kept, cols = [tuple(range(n)) for n in centred], width // 2 + 1
    # (values at a bound are left as they are, their gradient passed: the rule is the identity there)
    rule_acts = tuple(strides) * (len(size) if len(strides) == 1 else 1) != effective
    floor_acts = any(rnd(n / s) <= 2.0 for n, s in zip(size, effective))
    return _plan(kept, cols, 2 * (cols - 1), stride_rule_acts=rule_acts, crop_floor_acts=floor_acts)


def diffstride_plan(
    size: Sequence[int],
    strides: Sequence[float],
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    float64: bool = False,
) -> SpectralPlan:
    """The bins and output size DiffStride keeps for an input of spatial ``size``: ``(L,)``,
    ``(H, W)`` or ``(D, H, W)`` (every axis but the last follows the height rule, the last the
    rfft rule).

    ``strides`` are the stride values (one shared value or one per axis), before the
    reference's clamp to ``size / (size - R)``, which this function applies too. The mask's
    arithmetic is emulated exactly: float32 as the reference, or float64 for float64 strides.
    """
    return _diffstride_plan_nd(tuple(size), strides, smoothness_factor, cropping, lower_limit_stride,
                               upper_limit_stride, float64)


def _fixed_spectral_plan_nd(size: Sequence[int], strides: Sequence[float]) -> SpectralPlan:
    """FixedSpectralPooling in any dimensionality: every axis but the last keeps ``floor(n/S)``
    bins rounded down to even (centred), the last inverts to ``w = floor(W/S)``; all >= 2."""
    kept = [_fixed_centred(n, s) for n, s in zip(size[:-1], strides[:-1])]
    w = max(int(math.floor(size[-1] / strides[-1])), 2)
    return _plan(kept, w // 2 + 1, w)


def fixed_spectral_plan(size: Sequence[int], strides: Sequence[float]) -> SpectralPlan:
    """FixedSpectralPooling's plan for spatial ``size`` of any rank: every axis but the last keeps
    ``floor(n/S)`` bins rounded down to even (centred), the last inverts to ``w = floor(W/S_w)``;
    all >= 2. (1-D: bins ``[0, l//2 + 1)``, ``l = floor(L/S)``.)"""
    return _fixed_spectral_plan_nd(tuple(size), tuple(strides))


def _fixed_centred(n: int, stride: float) -> Tuple[int, ...]:
    """Kept bins of a centred axis of FixedSpectralPooling: ``floor(n/S)`` rounded down to even, >= 2."""
    out = max(2 * (int(math.floor(n / stride)) // 2), 2)
    return tuple(range(out // 2)) + tuple(range(n - out // 2, n))
