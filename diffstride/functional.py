"""The maths of spectral downsampling, as plain functions.

Every layer of :mod:`diffstride.pooling` is, per channel, the real linear map

    y = A_r · x · B_rᵀ − A_i · x · B_iᵀ

where ``A = A_r + i·A_i`` (h × H) and ``B = B_r + i·B_i`` (w × W) are small complex matrices that
fold together the unnormalised ``rfft2``, the spectral mask, the crop and the ``irfft2`` of the
reference implementation (google-research/diffstride). Building ``A`` and ``B`` from the
learnable strides and applying them as two real matrix products gives the reference's outputs
and gradients without complex tensors of the input's size, under autocast, with any memory
format and under ``torch.compile``.

The plan (which frequencies are kept and the output size) is computed in Python from the stride
values, emulating the reference's float32 arithmetic exactly, so that the output size is a
Python int and never the result of a data-dependent ``nonzero``.

One code path for every dimensionality: the public ops (``diff_stride1d/2d/3d``,
``fixed_spectral_pool1d/2d/3d``) check their input (rank, dtype, the strides tensor's shape, sizes
against the smoothness factor, limits, algorithm) with the functions of
:mod:`diffstride._validation`, raising errors that name the op, the value and what was expected,
then call one unchecked core per family (:func:`diff_stride_unchecked`,
:func:`fixed_spectral_pool_unchecked`), which the layers call directly after their own checks
(one check per call).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from diffstride import _compact
from diffstride._costs import autocast_off, choose_algorithm, use_compact
from diffstride._kernels import spectral_resample1d, spectral_resample2d, spectral_resample3d
from diffstride._masks import autocast_dtype, axis_stride, axis_weights, clamped_strides, working_dtype
from diffstride._plans import SpectralPlan, spatial_size, clamp_floors, diffstride_plan, effective_strides, fixed_spectral_plan
from diffstride import _validation as check
from diffstride._validation import ALGORITHMS

__all__ = [
    "diff_stride1d", "diff_stride2d", "diff_stride3d",
    "fixed_spectral_pool1d", "fixed_spectral_pool2d", "fixed_spectral_pool3d",
    "diff_stride_unchecked", "fixed_spectral_pool_unchecked", "diffstride_plan", "fixed_spectral_plan",
    "stride_values", "effective_strides", "choose_algorithm", "ALGORITHMS", "SpectralPlan",
]

_RESAMPLE = {1: spectral_resample1d, 2: spectral_resample2d, 3: spectral_resample3d}


# --------------------------------------------------------------------------------------------
# The layers' maths.


def _mask_strides(strides: torch.Tensor, size: Sequence[int], smoothness_factor: float,
                  lower: Optional[float], upper: Optional[float], clamped: bool = False) -> torch.Tensor:
    """The strides the masks see, as a differentiable tensor: the stride rule of
    :func:`diffstride._plans.effective_strides` (the reference's in-place clamp, value only, then
    the limits' clip). ``clamped``: the caller knows the values are at or above the clamp's floors
    (a layer clamps its parameter in place before planning): the clamp is the identity then."""
    s = strides.to(working_dtype(strides))
    if not clamped:
        s = clamped_strides(s, size, smoothness_factor)
    if upper is None and (lower is None or lower <= min(clamp_floors(size, smoothness_factor, s.numel() == 1))):
        return s  # the clip cannot act on clamped strides (value and gradient): skipped
    return axis_stride(s, lower, upper)


def _check_diffstride_call(x, strides, ndim: int, smoothness_factor, lower, upper, algorithm: str, name: str):
    """The functional op's checks (the layers run the same ones on their arguments); returns
    ``(smoothness_factor, lower, upper)`` as floats."""
    check.spatial_input(x, ndim, name)
    check.stride_tensor(strides, ndim, name)
    smoothness_factor = check.smoothness_factor(smoothness_factor)
    lower, upper = check.stride_limits(lower, upper)
    check.diffstride_size(spatial_size(x), smoothness_factor, name)
    check.algorithm(algorithm, ndim, "inputs")
    return smoothness_factor, lower, upper


def _check_fixed_call(x, strides, ndim: int, algorithm: str, name: str) -> Tuple[float, ...]:
    check.spatial_input(x, ndim, name)
    strides = tuple(float(v) for v in check.per_axis(strides, ndim))
    check.fixed_size(spatial_size(x), name)
    check.algorithm(algorithm, ndim, "inputs")
    return strides


def planned_values(strides: torch.Tensor, name: str) -> Tuple[float, ...]:
    """The stride values for planning (a device read), refused when not finite."""
    return refuse_non_finite(stride_values(strides), name)


def refuse_non_finite(values: Tuple[float, ...], name: str) -> Tuple[float, ...]:
    """``values`` (stride values about to be planned from), or ``FloatingPointError`` naming them."""
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(
            f"{name} strides are not finite: {values}. Training has diverged (lower the learning rate), "
            "or non-finite values were loaded into the strides.")
    return values


def stride_values(strides: torch.Tensor) -> Tuple[float, ...]:
    """The stride values as Python floats, exactly as the mask sees them (float32, or float64).

    Reads the tensor (a device sync)."""
    return tuple(float(v) for v in strides.detach().to(working_dtype(strides)).cpu().tolist())


def _centred_kept(plan: SpectralPlan, ndim: int) -> Tuple[Sequence[int], ...]:
    """The kept bins of each centred axis (every spatial axis but the last), outermost first."""
    return (plan.depth_rows, plan.rows) if ndim == 3 else (plan.rows,) if ndim == 2 else ()


def diff_stride_unchecked(
    x: torch.Tensor,
    strides: torch.Tensor,
    smoothness_factor: float,
    lower_limit_stride: Optional[float],
    upper_limit_stride: Optional[float],
    plan: SpectralPlan,
    algorithm: str = "auto",
    clamped: bool = False,
) -> torch.Tensor:
    """DiffStride on a (N, C, *spatial) tensor of 1 to 3 spatial axes, with ``plan`` already made
    (:func:`diffstride_plan`) and nothing checked: the core of :func:`diff_stride1d` /
    :func:`diff_stride2d` / :func:`diff_stride3d`, for callers that checked their arguments.

    Every spatial axis but the last is centred (the reference's height rule), the last is the
    real-FFT axis (its width rule); the mask of each axis is a differentiable function of its
    stride (one shared value or one per axis). ``clamped``: the stride values are known to be at
    or above the reference's clamp floors (a layer's, clamped in place before planning).
    """
    size = spatial_size(x)
    if use_compact(x):
        # the stride rule is skipped where the values planned from show that it is the identity
        s = (_mask_strides(strides, size, smoothness_factor, lower_limit_stride, upper_limit_stride, clamped)
             if plan.stride_rule_acts else strides.to(working_dtype(strides)))
        weights = _compact.mask_values(s, size, plan, smoothness_factor, not plan.crop_floor_acts)
        return _compact_resample(x, plan, weights, algorithm)
    s = _mask_strides(strides, size, smoothness_factor, lower_limit_stride, upper_limit_stride, clamped)
    stride = (lambda axis: s[0]) if s.numel() == 1 else (lambda axis: s[axis])  # noqa: E731
    weights = [axis_weights(n, stride(axis), tuple(kept), 0, smoothness_factor)
               for axis, (n, kept) in enumerate(zip(size[:-1], _centred_kept(plan, len(size))))]
    weights.append(axis_weights(size[-1], stride(len(size) - 1), None, plan.cols, smoothness_factor))
    return _RESAMPLE[len(size)](x, plan, *weights, algorithm)


def _compact_resample(x: torch.Tensor, plan: SpectralPlan, weights, algorithm: str) -> torch.Tensor:
    """The compact form (:mod:`diffstride._compact`): the matrix form's two GEMMs or the FFT form,
    by :func:`choose_algorithm`; operators and FFTs in float32 (float64 for float64 inputs), the
    matrix products in the autocast dtype under autocast, the output in it."""
    dtype, out_dtype = working_dtype(x), autocast_dtype(x)
    with autocast_off(x.device.type):
        if choose_algorithm(x, plan, algorithm) == "fft":
            return _compact.apply_fft(x, plan, weights, dtype, out_dtype)
        ops = _compact.operators(spatial_size(x), plan, weights, dtype, x.device)
        return _compact.apply_matmul(x, ops, out_dtype)


def _diff_stride(x, strides, ndim, name, smoothness_factor, cropping, lower, upper, plan, algorithm):
    """The checked op: the checks, the plan (from the stride values, a device read) unless given,
    then the core."""
    smoothness_factor, lower, upper = _check_diffstride_call(x, strides, ndim, smoothness_factor, lower, upper,
                                                             algorithm, name)
    if plan is None:
        plan = diffstride_plan(spatial_size(x), planned_values(strides, name), smoothness_factor, cropping,
                               lower, upper, float64=strides.dtype == torch.float64)
    return diff_stride_unchecked(x, strides, smoothness_factor, lower, upper, plan, algorithm)


def diff_stride2d(
    x: torch.Tensor,
    strides: torch.Tensor,
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    plan: Optional[SpectralPlan] = None,
    algorithm: str = "auto",
) -> torch.Tensor:
    """DiffStride on a (N, C, H, W) tensor with learnable ``strides`` ((2,) or shared (1,)).

    Same values and gradients as the reference's layer after its in-place clamp, which is
    applied here out of place (value clamped, gradient passed through, as the reference's read
    of the assigned variable). ``plan`` may be given when already known (it is computed from
    the stride values otherwise, which reads them from the device). ``algorithm``: ``'auto'``
    (by size, :func:`choose_algorithm`), ``'matmul'`` or ``'fft'``; same values and gradients.

    Shape:
        x: (N, C, H, W) → (N, C, h, w), ``(h, w) = plan.out_size``.
    """
    return _diff_stride(x, strides, 2, "diff_stride2d", smoothness_factor, cropping, lower_limit_stride,
                        upper_limit_stride, plan, algorithm)


def diff_stride1d(
    x: torch.Tensor,
    strides: torch.Tensor,
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    plan: Optional[SpectralPlan] = None,
    algorithm: str = "auto",
) -> torch.Tensor:
    """DiffStride on a (N, C, L) tensor with a learnable stride of shape (1,); ``algorithm`` as
    :func:`diff_stride2d` (the FFT form wins from lengths of a few hundred on).

    Shape:
        x: (N, C, L) → (N, C, l), ``l = 2 * (kept bins - 1)``.
    """
    return _diff_stride(x, strides, 1, "diff_stride1d", smoothness_factor, cropping, lower_limit_stride,
                        upper_limit_stride, plan, algorithm)


def diff_stride3d(
    x: torch.Tensor,
    strides: torch.Tensor,
    smoothness_factor: float = 4.0,
    cropping: bool = True,
    lower_limit_stride: Optional[float] = None,
    upper_limit_stride: Optional[float] = None,
    plan: Optional[SpectralPlan] = None,
    algorithm: str = "auto",
) -> torch.Tensor:
    """DiffStride on a (N, C, D, H, W) tensor with learnable ``strides`` ((3,) or shared (1,)).

    The reference's 2-D rules per axis: depth and height centred (as the 2-D height), width the
    real-FFT axis; computed with torch.fft (``algorithm`` 'auto' or 'fft').

    Shape:
        x: (N, C, D, H, W) → (N, C, d, h, w), ``(d, h, w) = plan.out_size``.
    """
    return _diff_stride(x, strides, 3, "diff_stride3d", smoothness_factor, cropping, lower_limit_stride,
                        upper_limit_stride, plan, algorithm)


def fixed_spectral_pool_unchecked(x: torch.Tensor, plan: SpectralPlan, algorithm: str = "auto") -> torch.Tensor:
    """Spectral pooling of a (N, C, *spatial) tensor with ``plan`` already made
    (:func:`fixed_spectral_plan`) and nothing checked: the core of the ``fixed_spectral_pool*d`` ops."""
    if use_compact(x):
        return _compact_resample(x, plan, None, algorithm)
    ndim = x.dim() - 2
    ones = lambda n: torch.ones(n, dtype=working_dtype(x), device=x.device)  # noqa: E731 - no mask: a hard crop
    weights = [ones(len(kept)) for kept in _centred_kept(plan, ndim)] + [ones(plan.cols)]
    return _RESAMPLE[ndim](x, plan, *weights, algorithm)


def _fixed_spectral_pool(x, strides, ndim, name, plan, algorithm) -> torch.Tensor:
    strides = _check_fixed_call(x, strides, ndim, algorithm, name)
    plan = plan or fixed_spectral_plan(spatial_size(x), strides)
    return fixed_spectral_pool_unchecked(x, plan, algorithm)


def fixed_spectral_pool2d(
    x: torch.Tensor, strides: Sequence[float], plan: Optional[SpectralPlan] = None, algorithm: str = "auto"
) -> torch.Tensor:
    """Spectral pooling with fixed ``strides`` (S_h, S_w) of a (N, C, H, W) tensor (no mask, hard crop)."""
    return _fixed_spectral_pool(x, strides, 2, "fixed_spectral_pool2d", plan, algorithm)


def fixed_spectral_pool1d(
    x: torch.Tensor, stride: float, plan: Optional[SpectralPlan] = None, algorithm: str = "auto"
) -> torch.Tensor:
    """Spectral pooling with a fixed ``stride`` of a (N, C, L) tensor."""
    return _fixed_spectral_pool(x, stride, 1, "fixed_spectral_pool1d", plan, algorithm)


def fixed_spectral_pool3d(
    x: torch.Tensor, strides: Sequence[float], plan: Optional[SpectralPlan] = None, algorithm: str = "auto"
) -> torch.Tensor:
    """Spectral pooling with fixed ``strides`` (S_d, S_h, S_w) of a (N, C, D, H, W) tensor."""
    return _fixed_spectral_pool(x, strides, 3, "fixed_spectral_pool3d", plan, algorithm)
