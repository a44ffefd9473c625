"""The cache-blocked kernels of spectral downsampling (the CPU's, for inputs above
``settings.cpu_compact_max_bytes``): each family's resample in the matrix form
(:mod:`~diffstride._matrix_form`) or the FFT form (:mod:`~diffstride._fft_form`), as
:func:`~diffstride._costs.choose_algorithm` decides. Masks and operators: :mod:`~diffstride._masks`.
Internal: :mod:`diffstride.functional` is the public API.
"""
from __future__ import annotations

import torch

from diffstride._costs import check_algorithm, choose_algorithm
from diffstride._fft_form import fft_resample
from diffstride._masks import irfft_coefficients, spectral_operator, working_dtype
from diffstride._matrix_form import apply_1d, apply_2d
from diffstride._plans import SpectralPlan

__all__ = ["spectral_resample1d", "spectral_resample2d", "spectral_resample3d"]


def spectral_resample2d(
    x: torch.Tensor,
    plan: SpectralPlan,
    row_weights: torch.Tensor,
    col_weights: torch.Tensor,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``irfft2(crop(mask ⊙ rfft2(x)))`` of a (N, C, H, W) tensor.

    ``row_weights`` (len(plan.rows)) and ``col_weights`` (plan.cols) are the mask values of the
    kept rows and rfft columns; gradients flow to them, and so to whatever they were built from.
    ``algorithm``: ``'matmul'`` (two real matrix products), ``'fft'`` (torch.fft), or
    ``'auto'`` (:func:`choose_algorithm`).
    """
    if choose_algorithm(x, plan, algorithm) == "fft":
        return fft_resample(x, plan, [row_weights], col_weights)
    height, width = x.shape[-2:]
    h, w = plan.out_size
    dtype = working_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        a_real, a_imag = spectral_operator(height, h, plan.rows, row_weights / h, dtype)
        coeffs = irfft_coefficients(plan.cols, w, dtype, x.device)
        b_real, b_imag = spectral_operator(width, w, range(plan.cols), coeffs * col_weights / w, dtype)
    return apply_2d(x, a_real, a_imag, b_real, b_imag)


def spectral_resample1d(x: torch.Tensor, plan: SpectralPlan, weights: torch.Tensor, algorithm: str = "auto") -> torch.Tensor:
    """``irfft(crop(mask ⊙ rfft(x)))`` of a (N, C, L) tensor: one real matrix product, or torch.fft."""
    if choose_algorithm(x, plan, algorithm) == "fft":
        return fft_resample(x, plan, [], weights)
    (out_len,) = plan.out_size
    dtype = working_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        coeffs = irfft_coefficients(plan.cols, out_len, dtype, x.device)
        b_real, _ = spectral_operator(x.shape[-1], out_len, range(plan.cols), coeffs * weights / out_len, dtype)
    return apply_1d(x, b_real)


def spectral_resample3d(x: torch.Tensor, plan: SpectralPlan, depth_weights: torch.Tensor, row_weights: torch.Tensor,
                        col_weights: torch.Tensor, algorithm: str = "auto") -> torch.Tensor:
    """``irfftn(crop(mask ⊙ rfftn(x)))`` of a (N, C, D, H, W) tensor, by torch.fft (the only 3-D form)."""
    check_algorithm(algorithm, 3, "inputs")
    return fft_resample(x, plan, [depth_weights, row_weights], col_weights)
