"""The compact form of the kernels: each layer call as a short graph of standard differentiable
operations (about 30 dispatched operations for a DiffStride forward and backward, whatever the size).

What a GPU wants (a launch per operation costs more than the arithmetic at CNN sizes), and what
the compiler, ``torch.func``, double backward, meta / fake tensors and ``torch.export`` need: no
``autograd.Function``, no Python loops over blocks or axes, no data-dependent shapes.

* **Masks**: the strides of every axis become the mask values of every kept bin of every axis in
  one chain of vectorised operations (positions, axis of each bin and sizes are cached constants).
* **Operators**: the matrix form's operators are linear in the mask values, so each is one GEMM
  of the mask values with a cached basis, ``A2 = a @ E_A`` and ``Bs = b @ E_B`` (the bases hold the
  DFT phases with the ``1/h``, ``1/w`` and rfft-doubling factors folded in; built from the same
  phase factors that build large operators as two small products per axis). FixedSpectralPooling's
  operators are constants (cached whole).
* **Matrix form**: two GEMMs, ``v = x @ [B_r; B_i]ᵀ`` (N, C, H, 2w), read as (N, C, 2H, w), then
  ``y = A2 @ v`` with ``A2[p, 2m + j] = (A_r, −A_i)[j][p, m]``: exactly
  ``A_r x B_rᵀ − A_i x B_iᵀ``, without a copy of the input or of the intermediate.
* **FFT form**: ``rfftn``, the kept bins by one ``index_select`` per centred axis, the mask as
  outer products (GEMMs), ``irfftn``; differentiated by autograd.

The cache-blocked kernels of :mod:`diffstride._kernels` (explicit backwards, first derivatives only)
stay the CPU's choice where they are faster (``settings.cpu_blocked_kernels``); both forms give the
same values and gradients (tests/test_oracle.py, tests/test_golden.py run both).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from diffstride import settings
from diffstride._masks import dft_angles, irfft_coefficients
from diffstride._plans import (
    SpectralPlan, cached_when_eager, height_positions, is_exporting, kept_runs, memory_format_of,
)


# --------------------------------------------------------------------------------------------
# Masks of every axis in one chain of operations.


@cached_when_eager
def _mask_layout(sizes: Tuple[int, ...], centred: Tuple[Tuple[int, ...], ...], cols: int, dtype, device):
    """Constants of the masks of one plan: the position of every kept bin (centred axes' bins,
    outermost first, then the rfft bins ``0 .. cols-1``), a one-hot (bins × axes) matrix of the
    axis each bin belongs to, half of each axis' size and the threshold's offset per axis (+1 on
    the rfft axis, the reference's width rule)."""
    with torch.inference_mode(False):  # a cached constant must not become an inference tensor
        positions, axis = [], []
        for i, (n, kept) in enumerate(zip(sizes[:-1], centred)):
            heights = height_positions(n)
            positions += [heights[r] for r in kept]
            axis += [i] * len(kept)
        positions += list(range(cols))
        axis += [len(sizes) - 1] * cols
        one_hot = torch.zeros(len(axis), len(sizes), dtype=dtype, device=device)
        one_hot[torch.arange(len(axis)), torch.tensor(axis)] = 1.0
        as_tensor = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        offsets = [0.0] * (len(sizes) - 1) + [1.0]
        return as_tensor(positions), one_hot, as_tensor([n / 2 for n in sizes]), as_tensor(offsets)


def mask_values(
    strides: torch.Tensor, sizes: Sequence[int], plan: SpectralPlan, smoothness_factor: float,
    floor_free: bool = False,
) -> torch.Tensor:
    """The mask value of every kept bin of every axis (centred axes' bins first, then the rfft
    bins), from the effective ``strides`` (one per axis, or one shared), as the reference computes
    them in float32: ``t = max(n/S, 2)/2`` (+1 on the rfft axis), ``clip((1/R) * (R + t - pos), 0, 1)``,
    every clip passing the gradient at its bounds included (TensorFlow's rule).

    ``(n/S)/2`` is computed as ``(n/2)/S`` (the same float: halving is exact). ``floor_free``: the
    caller knows ``n/S > 2`` on every axis (the ``max`` is then the identity, skipped)."""
    positions, one_hot, half_size, offset = _mask_layout(tuple(sizes), plan.centred_rows(), plan.cols,
                                                         strides.dtype, strides.device)
    half = half_size / strides  # a tensor division (the reference's rounding), broadcast if shared
    if not floor_free:
        half = torch.where(half >= 1.0, half, 1.0)  # tf.maximum(n/S, 2): gradient at equality
    threshold = one_hot @ (half + offset)  # each bin's threshold (exact: one term per row)
    ramp = (1.0 / smoothness_factor) * (smoothness_factor + threshold - positions)
    clipped = ramp.clamp(0.0, 1.0)
    # clip_by_value's gradient passes where 0 <= ramp <= 1, i.e. exactly where the clamp left it
    return torch.where(clipped == ramp, ramp, clipped.detach())


def split_axes(values: torch.Tensor, plan: SpectralPlan) -> list:
    """:func:`mask_values` split per axis (views): centred axes outermost first, then the rfft axis."""
    lengths = [len(r) for r in plan.centred_rows()] + [plan.cols]
    return list(values.split(lengths))


# --------------------------------------------------------------------------------------------
# The matrix form's operators: one GEMM of the mask values with a cached basis per axis.


@cached_when_eager
def height_factors(n_in: int, n_out: int, rows: Tuple[int, ...], dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``A2`` (:func:`height_basis`) as ``(P * a).view(n_out, 2K) @ R``: ``P`` (n_out, 2, K) holds
    ``cos, sin (2π k p / n_out) / n_out``, ``R`` (2K, 2·n_in) the input phases, interleaved as A2's
    columns. Memory ``O(K·(n_out + n_in))``, for operators whose basis would be too large."""
    with torch.inference_mode(False):
        k, f = torch.arange(len(rows), device=device), torch.tensor(rows, dtype=torch.long, device=device)
        p, m = torch.arange(n_out, device=device), torch.arange(n_in, device=device)
        alpha = dft_angles(p, k, n_out, dtype)  # (n_out, K)
        beta = dft_angles(f, m, n_in, dtype)  # (K, n_in)
        left = torch.stack([torch.cos(alpha), torch.sin(alpha)], dim=1) / n_out
        qc, qs = torch.cos(beta), torch.sin(beta)
        right = torch.cat([torch.stack([qc, qs], dim=-1), torch.stack([qs, -qc], dim=-1)]).reshape(2 * len(rows), -1)
        return left, right


@cached_when_eager
def width_factors(n_in: int, n_out: int, cols: int, dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``Bs = [B_r; B_i]`` (:func:`width_basis`) as ``(L * b).view(2·n_out, 2·cols) @ R``."""
    with torch.inference_mode(False):
        l, q, n = (torch.arange(v, device=device) for v in (cols, n_out, n_in))
        alpha = dft_angles(q, l, n_out, dtype)  # (n_out, cols)
        beta = dft_angles(l, n, n_in, dtype)  # (cols, n_in)
        c = irfft_coefficients(cols, n_out, dtype, device)
        ca, sa = torch.cos(alpha) * c / n_out, torch.sin(alpha) * c / n_out
        left = torch.cat([torch.stack([ca, sa], dim=1), torch.stack([sa, -ca], dim=1)])  # (2·n_out, 2, cols)
        return left, torch.cat([torch.cos(beta), torch.sin(beta)])


@cached_when_eager
def height_basis(n_in: int, n_out: int, rows: Tuple[int, ...], dtype, device) -> torch.Tensor:
    """``E_A`` (K, n_out·2·n_in): ``a @ E_A`` is ``A2`` (n_out, 2·n_in) with
    ``A2[p, 2m] = A_r[p, m]``, ``A2[p, 2m+1] = −A_i[p, m]`` of
    ``A[p, m] = Σ_k a_k exp(2πi (k·p/n_out − f_k·m/n_in)) / n_out``: the terms of
    :func:`height_factors`' product, one row per kept bin."""
    with torch.inference_mode(False):
        left, right = height_factors(n_in, n_out, rows, dtype, device)  # (n_out, 2, K), (2K, 2·n_in)
        return torch.einsum("pjk,jkc->kpc", left, right.view(2, len(rows), -1)).reshape(len(rows), -1)


@cached_when_eager
def width_basis(n_in: int, n_out: int, cols: int, dtype, device, imaginary: bool = True) -> torch.Tensor:
    """``E_B`` (cols, 2·n_out·n_in): ``b @ E_B`` is ``Bs = [B_r; B_i]`` (2·n_out, n_in) of
    ``B[q, n] = Σ_l c_l b_l exp(2πi l (q/n_out − n/n_in)) / n_out``, ``c_l`` 1 on DC and on the
    Nyquist bin of the output, else 2 (the real inverse's doubling): the terms of
    :func:`width_factors`' product. ``imaginary=False``: ``B_r`` alone (n_out, n_in), all that
    1-D needs."""
    with torch.inference_mode(False):
        left, right = width_factors(n_in, n_out, cols, dtype, device)  # (2·n_out, 2, cols), (2·cols, n_in)
        if not imaginary:
            left = left[:n_out]
        return torch.einsum("rjl,jln->lrn", left, right.view(2, cols, -1)).reshape(cols, -1)


@cached_when_eager
def operator_basis(size: Tuple[int, ...], plan: SpectralPlan, dtype, device) -> torch.Tensor:
    """All the operators' bases of a plan in one block-diagonal matrix (kept bins × operator
    elements): the mask values of every axis (:func:`mask_values`) times it is every operator,
    flattened and side by side (``A2`` then ``Bs`` in 2-D, ``B_r`` in 1-D): one GEMM per call."""
    with torch.inference_mode(False):
        if len(size) == 1:
            return width_basis(size[0], plan.out_size[0], plan.cols, dtype, device, False)
        (height, width), (h, w) = size, plan.out_size
        ea = height_basis(height, h, plan.rows, dtype, device)
        eb = width_basis(width, w, plan.cols, dtype, device)
        return torch.block_diag(ea, eb)


@cached_when_eager
def fixed_operators(size: Tuple[int, ...], plan: SpectralPlan, dtype, device) -> torch.Tensor:
    """FixedSpectralPooling's operators, flattened side by side (mask values all one): a constant."""
    with torch.inference_mode(False):
        ones = torch.ones(sum(len(r) for r in plan.centred_rows()) + plan.cols, dtype=dtype, device=device)
        return torch.cat([op.reshape(-1) for op in _factored_operators(size, plan, ones, dtype, device)])


def operators(size: Sequence[int], plan: SpectralPlan, weights: Optional[torch.Tensor], dtype,
              device) -> Tuple[torch.Tensor, ...]:
    """The matrix form's operators, ``(B_r,)`` in 1-D or ``(A2, Bs)`` in 2-D, from the mask values
    of every axis (:func:`mask_values`; ``None``: FixedSpectralPooling, no mask): one GEMM with
    the plan's basis, or, where the basis would hold more than ``settings.compact_basis_max``
    elements, two small products per axis (:func:`height_factors`, :func:`width_factors`)."""
    size = tuple(size)
    if weights is None:
        flat = fixed_operators(size, plan, dtype, device)
    elif _basis_elements(size, plan) <= settings.current().compact_basis_max:
        flat = weights.to(dtype) @ operator_basis(size, plan, dtype, device)
    else:
        return _factored_operators(size, plan, weights.to(dtype), dtype, device)
    if len(size) == 1:
        return (flat.view(plan.out_size[0], size[0]),)
    (height, width), (h, w) = size, plan.out_size
    return flat[:h * 2 * height].view(h, 2 * height), flat[h * 2 * height:].view(2 * w, width)


def _basis_elements(size: Tuple[int, ...], plan: SpectralPlan) -> int:
    if len(size) == 1:
        return plan.cols * plan.out_size[0] * size[0]
    (height, width), (h, w) = size, plan.out_size
    return (len(plan.rows) + plan.cols) * (h * 2 * height + 2 * w * width)  # block-diagonal


def _factored_operators(size, plan, weights, dtype, device):
    if len(size) == 1:
        (out_len,) = plan.out_size
        left, right = width_factors(size[0], out_len, plan.cols, dtype, device)
        b_real = (left[:out_len] * weights).view(out_len, -1) @ right
        return (b_real,)
    (height, width), (h, w) = size, plan.out_size
    a, b = split_axes(weights, plan)
    left, right = height_factors(height, h, plan.rows, dtype, device)
    a2 = (left * a).view(h, -1) @ right
    left, right = width_factors(width, w, plan.cols, dtype, device)
    bs = (left * b).view(2 * w, -1) @ right
    return a2, bs


# --------------------------------------------------------------------------------------------
# Applying them.


def apply_matmul(x: torch.Tensor, ops: Tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """The matrix form on (N, C, L) or (N, C, H, W) in ``dtype`` (the autocast dtype under
    autocast): one GEMM in 1-D, two in 2-D. A channels_last input is read contiguous and the
    output returned channels_last."""
    channels_last = memory_format_of(x) == torch.channels_last
    x = x.to(dtype).contiguous()
    if x.dim() == 3:
        return torch.matmul(x, ops[0].to(dtype).t())
    a2, bs = ops
    n, c, height, _ = x.shape
    h, w = a2.shape[0], bs.shape[0] // 2
    v = torch.matmul(x, bs.to(dtype).t())  # (N, C, H, 2w) = (N, C, 2H, w) in memory: one GEMM
    # the height product as one batched GEMM whose operator has batch stride 0 (no copies)
    y = torch.bmm(a2.to(dtype).expand(n * c, h, 2 * height), v.view(n * c, 2 * height, w)).view(n, c, h, w)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def apply_fft(x: torch.Tensor, plan: SpectralPlan, weights: Optional[Sequence[torch.Tensor]], dtype: torch.dtype,
              out_dtype: torch.dtype) -> torch.Tensor:
    """The FFT form: ``irfftn(crop(rfftn(x)) ⊙ mask)`` over the spatial axes, in ``dtype``
    (float32 or float64: FFT libraries have no bfloat16), differentiated by autograd; the output
    in ``out_dtype`` and the input's memory format. ``weights``: the mask values per axis
    (:func:`mask_values`), or ``None`` (FixedSpectralPooling: no mask)."""
    nd = x.dim() - 2
    dims = tuple(range(-nd, 0))
    spectrum = torch.fft.rfftn(x.to(dtype), dim=dims)
    spectrum = spectrum[..., :plan.cols] if plan.cols < spectrum.shape[-1] else spectrum
    exporting = is_exporting()
    for axis, rows in enumerate(plan.centred_rows()):
        if rows == tuple(range(spectrum.shape[2 + axis])):
            continue
        if exporting:  # ONNX has no complex gather: the runs of kept bins by slices, concatenated
            parts = [spectrum.narrow(2 + axis, start, stop - start) for start, stop in kept_runs(rows)]
            spectrum = parts[0] if len(parts) == 1 else torch.cat(parts, 2 + axis)
        else:
            spectrum = spectrum.index_select(2 + axis, _index(rows, x.device))
    if weights is not None:
        # the separable mask as products of column vectors and row vectors (GEMMs: their
        # gradients are GEMMs too, no reductions)
        *centred, cols = split_axes(weights.to(dtype), plan)
        mask = cols[None, :]
        for w in reversed(centred):
            mask = (w[:, None] @ mask.reshape(1, -1)).view(len(w), *mask.shape)
        spectrum = spectrum * mask.reshape(spectrum.shape[2:])
    y = torch.fft.irfftn(spectrum, s=tuple(plan.out_size), dim=dims)
    fmt = memory_format_of(x)
    if y.dtype != out_dtype or fmt is not torch.contiguous_format:
        y = y.to(dtype=out_dtype, memory_format=fmt)
    return y


@cached_when_eager
def _index(rows: Tuple[int, ...], device) -> torch.Tensor:
    """The kept bins of a centred axis as an index tensor (a constant)."""
    with torch.inference_mode(False):
        return torch.tensor(rows, dtype=torch.long, device=device)
