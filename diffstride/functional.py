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

The ops check their input (rank, dtype, the strides tensor's shape, sizes against the smoothness
factor, limits, algorithm) with the functions of :mod:`diffstride._validation`, the same the
layers run on their arguments, and raise errors that name the op, the value and what was expected.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from diffstride._kernels import (  # noqa: F401  (the kernels' names stay reachable here)
    ALGORITHMS,
    _apply_1d, _apply_2d, _autocast_dtype, _axis_stride, _axis_weights, _batch_block, _check_algorithm, _clamped, _fft_resample,
    _working_dtype, choose_algorithm, clip_inclusive, fft_cost, fft_cost_weight, matmul_cost, maximum_inclusive, operator_elements,
    spectral_mask, spectral_operator, spectral_resample1d, spectral_resample2d, spectral_resample3d,
)
from diffstride._plans import (  # noqa: F401
    SpectralPlan, _f32, clamp_floors, diffstride_plan, diffstride_plan_1d, diffstride_plan_3d, effective_strides,
    fixed_spectral_plan, fixed_spectral_plan_1d, fixed_spectral_plan_3d, height_positions, min_stride,
)
from diffstride import _validation as check

__all__ = [
    "diff_stride1d", "diff_stride2d", "diff_stride3d",
    "fixed_spectral_pool1d", "fixed_spectral_pool2d", "fixed_spectral_pool3d",
    "stride_values", "effective_strides", "choose_algorithm", "ALGORITHMS", "SpectralPlan",
]


# --------------------------------------------------------------------------------------------
# The layers' maths.


def _mask_strides(strides: torch.Tensor, size: Sequence[int], smoothness_factor: float,
                  lower: Optional[float], upper: Optional[float]) -> torch.Tensor:
    """The strides the masks see, as a differentiable tensor: the stride rule of
    :func:`diffstride._plans.effective_strides` (the reference's in-place clamp, value only, then
    the limits' clip)."""
    s = _clamped(strides.to(_working_dtype(strides)), size, smoothness_factor)
    return _axis_stride(s, lower, upper)


def _check_diffstride_call(x, strides, ndim: int, smoothness_factor, lower, upper, algorithm: str, name: str):
    """The functional op's checks (the layers run the same ones on their arguments); returns
    ``(smoothness_factor, lower, upper)`` as floats."""
    check.spatial_input(x, ndim, name)
    check.stride_tensor(strides, ndim, name)
    smoothness_factor = check.smoothness_factor(smoothness_factor)
    lower, upper = check.stride_limits(lower, upper)
    check.diffstride_size(tuple(x.shape[2:]), smoothness_factor, name)
    check.algorithm(algorithm, ndim, "inputs")
    return smoothness_factor, lower, upper


def _check_fixed_call(x, strides, ndim: int, algorithm: str, name: str) -> Tuple[float, ...]:
    check.spatial_input(x, ndim, name)
    strides = tuple(float(v) for v in check.per_axis(strides, ndim))
    check.fixed_size(tuple(x.shape[2:]), name)
    check.algorithm(algorithm, ndim, "inputs")
    return strides


def _planned_values(strides: torch.Tensor, name: str) -> Tuple[float, ...]:
    """The stride values for planning (a device read), refused when not finite."""
    values = stride_values(strides)
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(
            f"{name} strides are not finite: {values}. Training has diverged (lower the learning rate), "
            "or non-finite values were loaded into the strides.")
    return values


def stride_values(strides: torch.Tensor) -> Tuple[float, ...]:
    """The stride values as Python floats, exactly as the mask sees them (float32, or float64).

    Reads the tensor (a device sync)."""
    return tuple(float(v) for v in strides.detach().to(_working_dtype(strides)).cpu().tolist())


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
    smoothness_factor, lower_limit_stride, upper_limit_stride = _check_diffstride_call(
        x, strides, 2, smoothness_factor, lower_limit_stride, upper_limit_stride, algorithm, "diff_stride2d")
    height, width = x.shape[-2:]
    if plan is None:
        plan = diffstride_plan(
            (height, width), _planned_values(strides, "diff_stride2d"), smoothness_factor, cropping,
            lower_limit_stride, upper_limit_stride, float64=strides.dtype == torch.float64,
        )
    s = _mask_strides(strides, (height, width), smoothness_factor, lower_limit_stride, upper_limit_stride)
    s_h, s_w = (s[0], s[0]) if s.numel() == 1 else (s[0], s[1])
    positions = height_positions(height)
    row_weights = _axis_weights(height, s_h, [positions[r] for r in plan.rows], smoothness_factor, False)
    col_weights = _axis_weights(width, s_w, range(plan.cols), smoothness_factor, True)
    return spectral_resample2d(x, plan, row_weights, col_weights, algorithm)


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
    smoothness_factor, lower_limit_stride, upper_limit_stride = _check_diffstride_call(
        x, strides, 1, smoothness_factor, lower_limit_stride, upper_limit_stride, algorithm, "diff_stride1d")
    length = x.shape[-1]
    if plan is None:
        plan = diffstride_plan_1d(
            length, _planned_values(strides, "diff_stride1d")[0], smoothness_factor, cropping,
            lower_limit_stride, upper_limit_stride, float64=strides.dtype == torch.float64,
        )
    s = _mask_strides(strides, (length,), smoothness_factor, lower_limit_stride, upper_limit_stride)
    weights = _axis_weights(length, s[0], range(plan.cols), smoothness_factor, True)
    return spectral_resample1d(x, plan, weights, algorithm)


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
    smoothness_factor, lower_limit_stride, upper_limit_stride = _check_diffstride_call(
        x, strides, 3, smoothness_factor, lower_limit_stride, upper_limit_stride, algorithm, "diff_stride3d")
    size = tuple(x.shape[-3:])
    if plan is None:
        plan = diffstride_plan_3d(size, _planned_values(strides, "diff_stride3d"), smoothness_factor, cropping,
                                  lower_limit_stride, upper_limit_stride, float64=strides.dtype == torch.float64)
    s = _mask_strides(strides, size, smoothness_factor, lower_limit_stride, upper_limit_stride)
    s_d, s_h, s_w = (s[0], s[0], s[0]) if s.numel() == 1 else (s[0], s[1], s[2])
    depth_pos, height_pos = height_positions(size[0]), height_positions(size[1])
    depth_weights = _axis_weights(size[0], s_d, [depth_pos[r] for r in plan.depth_rows], smoothness_factor, False)
    row_weights = _axis_weights(size[1], s_h, [height_pos[r] for r in plan.rows], smoothness_factor, False)
    col_weights = _axis_weights(size[2], s_w, range(plan.cols), smoothness_factor, True)
    return spectral_resample3d(x, plan, depth_weights, row_weights, col_weights, algorithm)


def _ones(n: int, x: torch.Tensor) -> torch.Tensor:
    return torch.ones(n, dtype=_working_dtype(x), device=x.device)


def fixed_spectral_pool2d(
    x: torch.Tensor, strides: Sequence[float], plan: Optional[SpectralPlan] = None, algorithm: str = "auto"
) -> torch.Tensor:
    """Spectral pooling with fixed ``strides`` (S_h, S_w) of a (N, C, H, W) tensor (no mask, hard crop)."""
    strides = _check_fixed_call(x, strides, 2, algorithm, "fixed_spectral_pool2d")
    plan = plan or fixed_spectral_plan(tuple(x.shape[-2:]), strides)
    return spectral_resample2d(x, plan, _ones(len(plan.rows), x), _ones(plan.cols, x), algorithm)


def fixed_spectral_pool1d(
    x: torch.Tensor, stride: float, plan: Optional[SpectralPlan] = None, algorithm: str = "auto"
) -> torch.Tensor:
    """Spectral pooling with a fixed ``stride`` of a (N, C, L) tensor."""
    (stride,) = _check_fixed_call(x, stride, 1, algorithm, "fixed_spectral_pool1d")
    plan = plan or fixed_spectral_plan_1d(x.shape[-1], stride)
    return spectral_resample1d(x, plan, _ones(plan.cols, x), algorithm)


def fixed_spectral_pool3d(
    x: torch.Tensor, strides: Sequence[float], plan: Optional[SpectralPlan] = None, algorithm: str = "auto"
) -> torch.Tensor:
    """Spectral pooling with fixed ``strides`` (S_d, S_h, S_w) of a (N, C, D, H, W) tensor."""
    strides = _check_fixed_call(x, strides, 3, algorithm, "fixed_spectral_pool3d")
    plan = plan or fixed_spectral_plan_3d(tuple(x.shape[-3:]), strides)
    return spectral_resample3d(x, plan, _ones(len(plan.depth_rows), x), _ones(len(plan.rows), x),
                               _ones(plan.cols, x), algorithm)

