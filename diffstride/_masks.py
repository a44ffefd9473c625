"""The masks of spectral downsampling and the operators they make: clips with TensorFlow's
gradient rule, the per-axis mask values, and the dense DFT operators of the blocked matrix form.
Internal: :mod:`diffstride.functional` is the public API.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from diffstride import settings
from diffstride._plans import cached_when_eager, clamp_floors, height_positions, stride_limits


def clip_inclusive(
    x: torch.Tensor, lower: Optional[float] = None, upper: Optional[float] = None
) -> torch.Tensor:
    """``clamp`` whose gradient passes where ``lower <= x <= upper`` (bounds included).

    TensorFlow's ``clip_by_value`` lets the gradient through at the bounds; ``torch.clamp``
    does not. Integer strides on even sizes put mask values exactly on 0 or 1, so the stride
    gradient of the reference depends on this rule.
    """
    if lower is None and upper is None:
        return x
    clipped = x.clamp(lower, upper)
    # the gradient passes where lower <= x <= upper, i.e. exactly where the clamp left x as it was
    return torch.where(clipped == x, x, clipped.detach())


def maximum_inclusive(x: torch.Tensor, floor: float) -> torch.Tensor:
    """``max(x, floor)`` whose gradient goes to ``x`` where ``x >= floor`` (as ``tf.maximum``)."""
    return torch.where(x >= floor, x, floor)


def spectral_mask(
    positions: torch.Tensor, threshold: torch.Tensor, smoothness_factor: float
) -> torch.Tensor:
    """``clip((1/R) * (R + t - pos), 0, 1)`` with the inclusive gradient rule, in the reference's order."""
    ramp = (1.0 / smoothness_factor) * (smoothness_factor + threshold - positions)
    return clip_inclusive(ramp, 0.0, 1.0)


def working_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32: the dtype of masks (from the strides) and of
    operators (from the input); half-precision inputs get float32 operators."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def axis_stride(
    stride: torch.Tensor, lower: Optional[float], upper: Optional[float]
) -> torch.Tensor:
    """The limits' clip of the stride rule (:func:`diffstride._plans.effective_strides`), gradient
    passed at the bounds included."""
    low, high = stride_limits(lower, upper, rnd=float)  # the tensor's comparison rounds to its dtype
    return clip_inclusive(stride, low, high)


def axis_weights(
    size: int,
    stride: torch.Tensor,
    kept: Optional[Tuple[int, ...]],
    cols: int,
    smoothness_factor: float,
) -> torch.Tensor:
    """Mask values of one axis, as a differentiable function of ``stride``: at the ``kept`` bins
    of a centred axis (the height rule), or, with ``kept=None``, at the rfft bins ``0 .. cols-1``
    (the width rule)."""
    # torch.full_like(...) / stride, not size / stride: Tensor.__rtruediv__ multiplies by the
    # reciprocal, which rounds differently from the reference's float32 division.
    cropped = maximum_inclusive(torch.full_like(stride, size) / stride, 2.0)
    threshold = cropped / 2.0
    if kept is None:
        threshold = threshold + 1.0
    pos = _mask_positions(size, kept, cols, stride.dtype, stride.device)
    return spectral_mask(pos, threshold, smoothness_factor)


@cached_when_eager
def _mask_positions(size: int, kept: Optional[Tuple[int, ...]], cols: int, dtype, device) -> torch.Tensor:
    """The mask positions of the kept bins of an axis (a constant, cached: a call at small sizes
    is short enough for these tensor constructions to show)."""
    with torch.inference_mode(False):  # a cached constant must not become an inference tensor
        if kept is None:
            return torch.arange(cols, dtype=dtype, device=device)
        positions = height_positions(size)
        return torch.tensor([positions[r] for r in kept], dtype=dtype, device=device)


@cached_when_eager
def _floor_tensor(floors: Tuple[float, ...], dtype, device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.tensor(floors, dtype=dtype, device=device)


def clamped_strides(strides: torch.Tensor, size: Sequence[int], smoothness_factor: float) -> torch.Tensor:
    """The reference's in-graph view of its in-place clamp: value ``max(S, size/(size-R))``, identity gradient."""
    floors = clamp_floors(size, smoothness_factor, shared=strides.numel() == 1)
    floor = _floor_tensor(floors, strides.dtype, strides.device)
    # exactly max(S, floor) in value (``S + (max - S)`` can be one ulp off), the identity in gradient
    return torch.maximum(strides, floor).detach() + (strides - strides.detach())


def dft_angles(rows: torch.Tensor, cols: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``2π (rows_i · cols_j mod n) / n``: the DFT phases of length ``n``, the product reduced
    modulo the period in integers first, so that it stays exact before the cosine. One home for
    the phases of the blocked operators (:func:`spectral_operator`) and the compact form's bases."""
    return (rows[:, None] * cols[None, :] % n).to(dtype) * (2 * math.pi / n)


def spectral_operator(
    n_in: int,
    n_out: int,
    freqs_in: Sequence[int],
    weights: torch.Tensor,
    dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of ``M[p, m] = Σ_k w_k exp(2πi (k·p/n_out − f_k·m/n_in))``.

    ``M`` (n_out × n_in) maps a signal to the inverse DFT of length ``n_out`` of its DFT bins
    ``freqs_in`` weighted by ``weights`` and laid out at output bins ``0 .. K-1`` (``K <= n_out``).
    Large operators are built as ``n_out · ifft_k(w_k exp(−2πi f_k m / n_in))``:
    ``O(n_out · n_in · log n_out)`` work, not the ``K``-long inner product per entry. Small ones
    (``K · n_out · n_in <= settings.direct_operator_max``), and every one inside ``torch.compile`` or an
    export (no complex tensors in the graph, so that ONNX export works), use the direct real
    products. Angles are reduced modulo the period in integers first, so that they stay exact
    before the cosine.
    """
    if len(freqs_in) > n_out:
        raise ValueError(f"spectral_operator lays out {len(freqs_in)} bins in an output of length {n_out}")
    device = weights.device
    m = torch.arange(n_in, device=device)
    f = torch.tensor(list(freqs_in), device=device, dtype=torch.long)
    angle_in = dft_angles(f, m, n_in, dtype)
    cos_in, sin_in = torch.cos(angle_in), torch.sin(angle_in)
    w = weights.to(dtype)
    if len(freqs_in) * n_out * n_in <= settings.current().direct_operator_max or torch.compiler.is_compiling():
        k = torch.arange(len(freqs_in), device=device)
        p = torch.arange(n_out, device=device)
        angle_out = dft_angles(p, k, n_out, dtype)
        wc, ws = torch.cos(angle_out) * w, torch.sin(angle_out) * w
        return wc @ cos_in + ws @ sin_in, ws @ cos_in - wc @ sin_in
    z = torch.complex(w[:, None] * cos_in, -w[:, None] * sin_in)  # (K, n_in)
    op = torch.fft.ifft(z, n=n_out, dim=0, norm="forward")  # Σ_k z[k, m] e^{2πi k p / n_out}
    return op.real, op.imag


def irfft_coefficients(cols: int, out_len: int, dtype: torch.dtype, device) -> torch.Tensor:
    """How often each kept rfft bin counts in a real inverse of length ``out_len``: 1 for DC and Nyquist, else 2."""
    c = torch.full((cols,), 2.0, dtype=dtype, device=device)
    c[0] = 1.0
    if out_len % 2 == 0 and cols - 1 == out_len // 2:
        c[cols - 1] = 1.0
    return c


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    if not torch.amp.is_autocast_available(x.device.type):  # e.g. meta tensors
        return x.dtype
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
