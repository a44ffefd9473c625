"""The blocked FFT form: ``irfftn(crop(mask * rfftn(x)))`` with torch.fft by blocks of (sample,
channel) planes, the kept bins taken by slices, with an explicit backward.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from diffstride import settings
from diffstride._masks import autocast_dtype, working_dtype
from diffstride._plans import SpectralPlan, cached_when_eager, kept_runs, memory_format_of


# Blocks of the FFT form (settings.fft_block_*): the full-size spectra of a block stay small
# beside the input (the extra peak memory of forward + backward is then the output, the input's
# gradient and the kept spectrum, plus a block's temporaries: about four times the block). A
# single (sample, channel) plane is never split; small inputs are one block (splitting them
# costs time and saves nothing that matters). A 1-D plane is a single transform, which the FFT
# library runs on one thread: 1-D blocks have a floor of planes per thread; a 2-D or 3-D plane
# is many lines, spread over the threads already.


def fft_block(planes: torch.Tensor, nd: int) -> int:
    """Leading-axis entries per block of the FFT form over ``nd`` axes (settings' ``fft_block_*``)."""
    config = settings.current()
    count = planes.shape[0]
    entry_bytes = max(planes[:1].numel() * 4, 1)  # float32 (or wider) working copy
    if count * entry_bytes <= config.fft_block_min_bytes:
        return max(count, 1)
    by_bytes = max(1, config.fft_block_bytes // entry_bytes)
    by_fraction = max(1, -(-count // config.fft_block_fraction))
    floor = 1
    if nd == 1:  # (a compiled graph cannot read the thread count: taken as one there)
        floor = config.fft_planes_per_thread * (1 if torch.compiler.is_compiling() else torch.get_num_threads())
    return max(1, min(count, floor), min(count, by_bytes, by_fraction))


def _planes(t: torch.Tensor, nd: int, flat: bool) -> torch.Tensor:
    """``t`` (N, C, *spatial) as (N·C, *spatial) when ``flat`` (the input is contiguous), else
    itself (blocks then run along the batch: a channels_last tensor's channel planes are
    interleaved). A view: the blocks written into it land in ``t``."""
    return t.view(-1, *t.shape[-nd:]) if flat else t


@cached_when_eager
def _rfft_bin_factor(n: int, cols: int, interior: float, dtype, device) -> torch.Tensor:
    """``interior`` on the rfft bins of an ``n``-long axis that stand for two complex bins (not
    DC, not Nyquist), 1 on the others; bins ``0 .. cols-1``. A constant: cached (a few small
    tensor ops saved at every backward, which show at small inputs), except while compiling."""
    with torch.inference_mode(False):  # a cached constant must not become an inference tensor
        k = torch.arange(cols, device=device)
        edge = (k == 0) | (2 * k == n)
        return torch.where(edge, torch.ones((), dtype=dtype, device=device),
                           torch.full((), interior, dtype=dtype, device=device))


def _kept_pieces(plan: SpectralPlan, lead: int) -> list:
    """``(in_spectrum, in_kept)`` index pairs of slices, one per product of the centred axes'
    runs: the kept block is those pieces of the half spectrum, laid side by side."""
    per_axis = []
    for rows in plan.centred_rows():
        pairs, offset = [], 0
        for start, stop in kept_runs(rows):
            pairs.append((slice(start, stop), slice(offset, offset + stop - start)))
            offset += stop - start
        per_axis.append(pairs)
    head, cols = (slice(None),) * lead, (slice(0, plan.cols),)
    return [(head + tuple(p[0] for p in combo) + cols, head + tuple(p[1] for p in combo) + cols)
            for combo in itertools.product(*per_axis)]


def _take_kept(spectrum: torch.Tensor, plan: SpectralPlan, lead: int) -> torch.Tensor:
    """The kept block of a half spectrum by slices and a concatenation per centred axis (the
    pieces of :func:`_kept_pieces`): ONNX export has no complex gather or slice scatter."""
    if plan.cols < spectrum.shape[-1]:  # (a no-op slice is an alias, which ONNX export refuses on complex)
        spectrum = spectrum[..., :plan.cols]
    for axis, rows in enumerate(plan.centred_rows()):
        dim = lead + axis
        runs = kept_runs(rows)
        if len(runs) == 1 and runs[0] == (0, spectrum.shape[dim]):
            continue
        parts = [spectrum.narrow(dim, start, stop - start) for start, stop in runs]
        spectrum = parts[0] if len(parts) == 1 else torch.cat(parts, dim)
    return spectrum


def _own_tensor(t: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """``t.view(shape)`` (``t`` contiguous) as a tensor of its own on the same memory, not a view:
    a custom Function's output that is a view cannot be modified in place afterwards
    (``nn.ReLU(inplace=True)`` after the layer raised)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), shape, tuple(reversed(strides)))


class _FFTResample(torch.autograd.Function):
    """``y = irfftn(mask ⊙ crop(rfftn(x)))`` over the last ``nd`` axes, by blocks of planes, with
    an explicit backward.

    Autograd's own backward of ``rfftn`` zero-pads the gradient to the *full* complex spectrum
    and runs a complex inverse FFT (two full-size complex tensors: four times the input); this
    one writes the input's gradient block by block as ``irfftn(pad(c ⊙ mask ⊙ G), norm='forward')``
    (``G = rfftn(grad_y, norm='forward')`` with the inverse's doubling of interior bins, ``c`` the
    forward's halving), so the only full-size tensor is the gradient itself. The kept spectrum
    is saved only when the mask needs a gradient (DiffStride's strides).
    """

    @staticmethod
    def forward(ctx, x, mask, plan, nd, dtype, out_dtype):
        out_size = tuple(plan.out_size)
        dims = tuple(range(-nd, 0))
        fmt, flat = memory_format_of(x), x.is_contiguous()
        planes = _planes(x, nd, flat)
        lead = planes.dim() - nd
        # the mask's gradient needs the kept spectrum: saved when small beside the input (a
        # stride of 2 per axis), else recomputed from the input block by block in the backward
        kept_shape = planes.shape[:lead] + mask.shape
        keep = ctx.needs_input_grad[1] and 2 * math.prod(kept_shape) <= x.numel() * settings.current().keep_spectrum_max
        kept = torch.empty(kept_shape, dtype=mask.dtype.to_complex(), device=x.device) if keep else None
        block = fft_block(planes, nd)
        # one block of a contiguous input: the inverse's result is the output (no second copy)
        direct = block >= planes.shape[0] and flat and out_dtype == dtype
        y_shape = x.shape[:-nd] + out_size
        y = None if direct else torch.empty(y_shape, dtype=out_dtype, device=x.device, memory_format=fmt)
        y_planes = None if direct else _planes(y, nd, flat)
        for start in range(0, planes.shape[0], block):
            spectrum = _take_kept(torch.fft.rfftn(planes[start:start + block].to(dtype), dim=dims), plan, lead)
            if keep:
                kept[start:start + block] = spectrum
            spectrum = spectrum * mask  # drops the block's full spectrum before the inverse
            y_block = torch.fft.irfftn(spectrum, s=out_size, dim=dims)
            if direct:
                y = y_block.view(y_shape) if torch.compiler.is_compiling() else _own_tensor(y_block, y_shape)
            else:
                y_planes[start:start + block] = y_block
        recompute = ctx.needs_input_grad[1] and not keep
        ctx.save_for_backward(mask, kept if keep else None, x if recompute else None)
        ctx.plan, ctx.nd, ctx.dtype, ctx.block = plan, nd, dtype, block
        ctx.x_meta = (x.shape, x.dtype, fmt, flat)
        return y

    @staticmethod
    @once_differentiable  # second derivatives would miss the saved spectrum's dependence on x
    def backward(ctx, grad_y):
        mask, kept, x = ctx.saved_tensors
        plan, nd, dtype, block = ctx.plan, ctx.nd, ctx.dtype, ctx.block
        x_shape, x_dtype, fmt, flat = ctx.x_meta
        need_x, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        size, out_size = tuple(x_shape[-nd:]), tuple(plan.out_size)
        dims = tuple(range(-nd, 0))
        device = grad_y.device
        g_planes = _planes(grad_y.contiguous() if flat else grad_y, nd, flat)
        lead = g_planes.dim() - nd
        pieces = _kept_pieces(plan, lead)
        # inverse's adjoint: interior output bins doubled; forward's adjoint: interior input bins halved
        doubling = _rfft_bin_factor(out_size[-1], plan.cols, 2.0, dtype, device)
        x_factor = mask * doubling * _rfft_bin_factor(size[-1], plan.cols, 0.5, dtype, device)
        grad_mask = torch.zeros_like(mask) if need_mask else None
        direct = need_x and block >= g_planes.shape[0] and flat and x_dtype == dtype
        grad_x = torch.empty(x_shape, dtype=x_dtype, device=device, memory_format=fmt) if need_x and not direct else None
        gx_planes = _planes(grad_x, nd, flat) if need_x and not direct else None
        half = size[:-1] + (size[-1] // 2 + 1,)
        for start in range(0, g_planes.shape[0], block):
            g = torch.fft.rfftn(g_planes[start:start + block].to(dtype), dim=dims, norm="forward")
            if need_mask:
                if kept is not None:
                    spectrum = kept[start:start + block]
                else:
                    x_block = _planes(x, nd, flat)[start:start + block]
                    spectrum = _take_kept(torch.fft.rfftn(x_block.to(dtype), dim=dims), plan, lead)
                grad_mask += torch.real(g * spectrum.conj()).sum(dim=tuple(range(lead))) * doubling
                del spectrum  # (a recomputed one) before the inverse below
            if need_x:
                full = torch.zeros(g.shape[:lead] + half, dtype=g.dtype, device=device)
                g.mul_(x_factor)
                for in_spectrum, in_kept in pieces:
                    full[in_spectrum] = g[in_kept]
                del g
                gx_block = torch.fft.irfftn(full, s=size, dim=dims, norm="forward")
                del full
                if direct:
                    grad_x = gx_block.view(x_shape)
                else:
                    gx_planes[start:start + block] = gx_block
        return grad_x, grad_mask, None, None, None, None


def fft_resample(x: torch.Tensor, plan: SpectralPlan, centred_weights: Sequence[torch.Tensor],
                  col_weights: torch.Tensor) -> torch.Tensor:
    """``irfftn(crop(mask ⊙ rfftn(x)))`` with torch.fft over the spatial axes of (N, C, *spatial).

    The kept bins are taken by slices (the plan's runs of bins), the separable mask multiplies
    the kept block, and the inverse has the plan's output size; by blocks of (sample, channel)
    planes, with the explicit backward of :class:`_FFTResample` (memory: no full-size complex
    tensor beyond a block's). Runs in float32 (float64 for float64 inputs) with autocast off:
    FFT libraries have no bfloat16; under autocast the output is returned in the autocast
    dtype, as the matrix form's. The output keeps a channels_last input's format.
    """
    nd = x.dim() - 2
    dtype = working_dtype(x)
    out_dtype = autocast_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        mask = col_weights.to(dtype)
        for axis, weights in enumerate(centred_weights):
            shape = [1] * nd
            shape[axis] = -1
            mask = mask * weights.to(dtype).view(shape)
        mask = mask.expand(tuple(len(r) for r in plan.centred_rows()) + (plan.cols,))
        return _FFTResample.apply(x, mask, plan, nd, dtype, out_dtype)
