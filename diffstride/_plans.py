"""Plans of spectral downsampling: which frequencies are kept and the output size, as Python ints.

Computed from the stride values in Python, emulating the reference's float32 arithmetic exactly
(:func:`_f32`), so that an output size is never the result of a data-dependent ``nonzero`` and a
frozen layer's shapes are static. Pure Python: no tensors.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple



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

    def centred_rows(self) -> Tuple[Tuple[int, ...], ...]:
        """Kept bins of every centred (complex-FFT) axis, outermost first: () in 1-D, (rows,) in
        2-D, (depth_rows, rows) in 3-D."""
        return tuple(r for r in (self.depth_rows, self.rows) if r) if len(self.out_size) > 1 else ()


def height_positions(height: int) -> list:
    """Mask positions of the FFT rows of a ``height``-long axis, exactly as the reference builds them.

    ``r = arange(H//2 + H%2)``; ``pos = fftshift(cat(flip(r[H%2:]), r))``. H = 8 gives
    ``[0, 1, 2, 3, 3, 2, 1, 0]``; H = 31 gives ``[1, 2, ..., 15, 15, 14, ..., 1, 0]``.
    """
    r = list(range(height // 2 + height % 2))
    unshifted = list(reversed(r[height % 2:])) + r
    shift = height // 2  # fftshift rolls by n // 2
    return [unshifted[(i - shift) % height] for i in range(height)]


def min_stride(size: int, smoothness_factor: float) -> float:
    """The smallest stride the reference allows along an axis: ``size / (size - R)`` in float32."""
    return _f32(size / _f32(size - _f32(smoothness_factor)))


def _f64(value: float) -> float:
    return value


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


def _effective_stride(
    stride: float, size_min: float, lower: Optional[float], upper: Optional[float], rnd=_f32
) -> float:
    stride = max(stride, size_min)
    low = 1.0 if lower is None else rnd(lower)
    stride = max(stride, low)
    if upper is not None:
        stride = min(stride, rnd(upper))
    return stride


def diffstride_plan(
    size: Tuple[int, int],
    strides: Sequence[float],
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    float64: bool = False,
) -> SpectralPlan:
    """The rows, columns and output size DiffStride keeps for an input of spatial ``size``.

    ``strides`` are the stride values (one shared value or ``(S_h, S_w)``), before the
    reference's clamp to ``size / (size - R)``, which this function applies too. The mask's
    arithmetic is emulated exactly: float32 as the reference, or float64 for float64 strides.
    """
    rnd = _f64 if float64 else _f32
    height, width = size
    if len(strides) == 1:
        shared = max(strides[0], min_stride(height, smoothness_factor), min_stride(width, smoothness_factor))
        s_h = s_w = _effective_stride(shared, 0.0, lower_limit_stride, upper_limit_stride, rnd)
    else:
        s_h = _effective_stride(strides[0], min_stride(height, smoothness_factor), lower_limit_stride, upper_limit_stride, rnd)
        s_w = _effective_stride(strides[1], min_stride(width, smoothness_factor), lower_limit_stride, upper_limit_stride, rnd)
    if cropping:
        rows = _kept(height_positions(height), _threshold(height, s_h, False, rnd), smoothness_factor, rnd)
        cols = len(_kept(range(width // 2 + 1), _threshold(width, s_w, True, rnd), smoothness_factor, rnd))
    else:
        rows, cols = list(range(height)), width // 2 + 1
    return SpectralPlan(tuple(rows), cols, (len(rows), 2 * (cols - 1)))


def diffstride_plan_1d(
    length: int,
    stride: float,
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    float64: bool = False,
) -> SpectralPlan:
    """1-D version of :func:`diffstride_plan` (the width rule alone)."""
    rnd = _f64 if float64 else _f32
    s = _effective_stride(stride, min_stride(length, smoothness_factor), lower_limit_stride, upper_limit_stride, rnd)
    if cropping:
        cols = len(_kept(range(length // 2 + 1), _threshold(length, s, True, rnd), smoothness_factor, rnd))
    else:
        cols = length // 2 + 1
    return SpectralPlan((), cols, (2 * (cols - 1),))


def fixed_spectral_plan(size: Tuple[int, int], strides: Sequence[float]) -> SpectralPlan:
    """FixedSpectralPooling: ``h = floor(H/S_h)`` rounded down to even, ``w = floor(W/S_w)``, both >= 2."""
    rows, h = _fixed_centred(size[0], strides[0])
    w = max(int(math.floor(size[1] / strides[1])), 2)
    return SpectralPlan(rows, w // 2 + 1, (h, w))


def fixed_spectral_plan_1d(length: int, stride: float) -> SpectralPlan:
    """1-D FixedSpectralPooling: keeps bins ``[0, l//2 + 1)`` and inverts to ``l = floor(L/S)`` (>= 2)."""
    out = max(int(math.floor(length / stride)), 2)
    return SpectralPlan((), out // 2 + 1, (out,))


def diffstride_plan_3d(
    size: Tuple[int, int, int],
    strides: Sequence[float],
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    float64: bool = False,
) -> SpectralPlan:
    """3-D version of :func:`diffstride_plan` for (D, H, W): depth and height follow the height
    rule (centred positions), width the rfft rule; ``strides`` is one shared value or three."""
    rnd = _f64 if float64 else _f32
    mins = [min_stride(n, smoothness_factor) for n in size]
    if len(strides) == 1:
        shared = _effective_stride(max([strides[0]] + mins), 0.0, lower_limit_stride, upper_limit_stride, rnd)
        effective = [shared] * 3
    else:
        effective = [_effective_stride(v, m, lower_limit_stride, upper_limit_stride, rnd) for v, m in zip(strides, mins)]
    depth, height, width = size
    if cropping:
        kept = [tuple(_kept(height_positions(n), _threshold(n, st, False, rnd), smoothness_factor, rnd))
                for n, st in zip((depth, height), effective[:2])]
        cols = len(_kept(range(width // 2 + 1), _threshold(width, effective[2], True, rnd), smoothness_factor, rnd))
    else:
        kept, cols = [tuple(range(depth)), tuple(range(height))], width // 2 + 1
    return SpectralPlan(kept[1], cols, (len(kept[0]), len(kept[1]), 2 * (cols - 1)), depth_rows=kept[0])


def _fixed_centred(n: int, stride: float) -> Tuple[Tuple[int, ...], int]:
    """Kept bins of a centred axis of FixedSpectralPooling: ``floor(n/S)`` rounded down to even, >= 2."""
    out = max(2 * (int(math.floor(n / stride)) // 2), 2)
    return tuple(range(out // 2)) + tuple(range(n - out // 2, n)), out


def fixed_spectral_plan_3d(size: Tuple[int, int, int], strides: Sequence[float]) -> SpectralPlan:
    """3-D FixedSpectralPooling: depth and height as the 2-D height, width as the 2-D width."""
    (depth_rows, d), (rows, h) = _fixed_centred(size[0], strides[0]), _fixed_centred(size[1], strides[1])
    w = max(int(math.floor(size[2] / strides[2])), 2)
    return SpectralPlan(rows, w // 2 + 1, (d, h, w), depth_rows=depth_rows)


