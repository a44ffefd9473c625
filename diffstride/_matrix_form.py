"""The blocked CPU matrix form: the spectral operators applied as two large real matrix products
(no complex tensor of the input's size), by blocks of the batch, with an explicit backward.
"""
from __future__ import annotations


import torch
from torch.autograd.function import once_differentiable

from diffstride import settings
from diffstride._masks import autocast_dtype
from diffstride._plans import memory_format_of


def apply_2d(
    x: torch.Tensor,
    a_real: torch.Tensor,
    a_imag: torch.Tensor,
    b_real: torch.Tensor,
    b_imag: torch.Tensor,
) -> torch.Tensor:
    """``y = A_r x B_rᵀ − A_i x B_iᵀ`` per (batch, channel) of a logical (N, C, H, W) tensor.

    The output has the input's memory format; under autocast the products run in the autocast
    dtype (the operators are built in float32 beforehand).
    """
    n, c, height, width = x.shape
    h, w = a_real.shape[0], b_real.shape[0]
    dtype = autocast_dtype(x)
    fmt = memory_format_of(x)
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(dtype)
        if height * width <= settings.current().kronecker_max_pixels:
            # K[(m, n), (p, q)] = A_r[p, m] B_r[q, n] - A_i[p, m] B_i[q, n]
            kron = torch.einsum("pm,qn->mnpq", a_real, b_real) - torch.einsum("pm,qn->mnpq", a_imag, b_imag)
            kron = kron.reshape(height * width, h * w).to(dtype)
            if fmt == torch.channels_last:
                # per sample (h·w × H·W) @ (H·W × C) on the physical layout: no copies
                x3 = x.permute(0, 2, 3, 1).reshape(n, height * width, c)
                y = torch.bmm(kron.t().expand(n, h * w, height * width), x3)
                return y.view(n, h, w, c).permute(0, 3, 1, 2)
            y = torch.mm(x.reshape(n * c, height * width), kron)
            return y.view(n, c, h, w)
        a_stack = torch.cat([a_real, a_imag], dim=0).to(dtype)
        return _SeparableProduct.apply(x, a_stack, b_real.to(dtype), b_imag.to(dtype))


def batch_block(x: torch.Tensor, pixels_per_image: int) -> int:
    """Images per block: on CPU, as many as keep a block's intermediates in cache; all on GPU."""
    n, c = x.shape[:2]
    if x.device.type != "cpu":
        return n
    per_sample = c * pixels_per_image * x.element_size()
    return max(1, min(n, settings.current().cpu_block_bytes // max(per_sample, 1)))


class _SeparableProduct(torch.autograd.Function):
    """``y = A_r x B_rᵀ − A_i x B_iᵀ`` per (sample, channel), by blocks of samples.

    A block of samples is copied height-major, to (H, b·C·W) for contiguous inputs or
    (H, b·W·C) for channels_last ones (a copy of contiguous rows either way), so that the height
    product is one GEMM ``[A_r; A_i] (2h × H) @ (H × b·C·W)``. Its two halves then take the
    width product: one GEMM each with ``B_rᵀ`` / ``B_iᵀ`` when W is the inner axis, one batched
    product over the h·b (W × C) matrices when C is. The result is copied into the output in
    the input's memory format. The backward runs the same products transposed, block by block,
    with the height products ``u`` saved by the forward (the blocks' copies of x are made again). Blocks keep the
    intermediates in cache on CPU (the products are bound by memory traffic there).
    """

    @staticmethod
    def forward(ctx, x, a_stack, b_real, b_imag):
        n, c, height, width = x.shape
        h, w = a_stack.shape[0] // 2, b_real.shape[0]
        fmt = memory_format_of(x)
        last = fmt == torch.channels_last
        block = batch_block(x, height * width + 2 * h * width + h * w)
        out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        saved = []
        for start in range(0, n, block):
            xb = x[start:start + block]
            b = xb.shape[0]
            xh = _to_height_major(xb, last)
            u = torch.mm(a_stack, xh)  # (2h, b·C·W) = [A_r x; A_i x]
            saved.append(u)
            y = _width_product(u, b_real, b_imag, h, b, c, width, last)
            out[start:start + b].copy_(_from_height_major(y, h, b, c, w, last))
        # the height-major copy of x is made again in the backward (a copy costs little beside
        # the products; keeping it would hold a second copy of the input until the backward)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, a_stack, b_real, b_imag, *saved)
        ctx.block, ctx.x_shape, ctx.x_format = block, x.shape, fmt
        return out

    @staticmethod
    @once_differentiable  # second derivatives would miss the saved intermediates' dependence on x
    def backward(ctx, grad_out):
        x, a_stack, b_real, b_imag, *saved = ctx.saved_tensors
        n, c, height, width = ctx.x_shape
        last = ctx.x_format == torch.channels_last
        dtype, device = a_stack.dtype, a_stack.device
        h, w = a_stack.shape[0] // 2, b_real.shape[0]
        need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        grad_x = torch.empty((n, c, height, width), dtype=dtype, device=device, memory_format=ctx.x_format) if need_x else None
        grad_a = torch.zeros_like(a_stack) if need_a else None
        grad_br = torch.zeros_like(b_real) if need_b else None
        grad_bi = torch.zeros_like(b_imag) if need_b else None
        for i, start in enumerate(range(0, n, ctx.block)):
            u = saved[i]
            gb = grad_out[start:start + ctx.block]
            b = gb.shape[0]
            gy = _to_height_major(gb, last)  # (h, b·C·w) or (h, b·w·C)
            grad_u = torch.empty((2 * h, b * c * width), dtype=dtype, device=device)
            if last:
                gy3 = gy.view(h * b, w, c)
                torch.matmul(b_real.t(), gy3, out=grad_u[:h].view(h * b, width, c))
                torch.matmul(b_imag.t(), gy3, out=grad_u[h:].view(h * b, width, c))
            else:
                gy2 = gy.view(h * b * c, w)
                torch.mm(gy2, b_real, out=grad_u[:h].view(h * b * c, width))
                torch.mm(gy2, b_imag, out=grad_u[h:].view(h * b * c, width))
            grad_u[h:].neg_()
            if need_b:
                if last:
                    ur, ui = u[:h].view(h * b, width, c), u[h:].view(h * b, width, c)
                    grad_br += torch.bmm(gy3, ur.transpose(1, 2)).sum(0)
                    grad_bi -= torch.bmm(gy3, ui.transpose(1, 2)).sum(0)
                else:
                    grad_br.addmm_(gy2.t(), u[:h].view(h * b * c, width))
                    grad_bi.addmm_(gy2.t(), u[h:].view(h * b * c, width), alpha=-1)
            if need_a:
                grad_a.addmm_(grad_u, _to_height_major(x[start:start + b], last).t())
            if need_x:
                gx = torch.mm(a_stack.t(), grad_u)  # (H, b·C·W) or (H, b·W·C)
                grad_x[start:start + b].copy_(_from_height_major(gx, height, b, c, width, last))
        return grad_x, grad_a, grad_br, grad_bi


def _to_height_major(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Copies a logical (b, C, H, W) tensor to a contiguous (H, b·C·W) matrix, or (H, b·W·C)."""
    b, c, height, width = x.shape
    if channels_last:
        out = torch.empty((height, b, width, c), dtype=x.dtype, device=x.device)
        out.copy_(x.permute(2, 0, 3, 1))
    else:
        out = torch.empty((height, b, c, width), dtype=x.dtype, device=x.device)
        out.copy_(x.permute(2, 0, 1, 3))
    return out.view(height, -1)


def _from_height_major(y: torch.Tensor, h: int, b: int, c: int, w: int, channels_last: bool) -> torch.Tensor:
    """The logical (b, C, h, w) view of a height-major (h, b·C·w) or (h, b·w·C) matrix."""
    if channels_last:
        return y.view(h, b, w, c).permute(1, 3, 0, 2)
    return y.view(h, b, c, w).permute(1, 2, 0, 3)


def _width_product(u, b_real, b_imag, h, b, c, width, channels_last):
    """``A_r x B_rᵀ − A_i x B_iᵀ`` from ``u = [A_r x; A_i x]`` (height-major), height-major out."""
    if channels_last:
        ur, ui = u[:h].view(h * b, width, c), u[h:].view(h * b, width, c)
        y = torch.matmul(b_real, ur)  # (h·b, w, C)
        return y.sub_(torch.matmul(b_imag, ui)).view(h, -1)
    y = torch.mm(u[:h].view(h * b * c, width), b_real.t())
    return torch.addmm(y, u[h:].view(h * b * c, width), b_imag.t(), alpha=-1).view(h, -1)


def apply_1d(x: torch.Tensor, b_real: torch.Tensor) -> torch.Tensor:
    """``y = x B_rᵀ`` over the last axis of (N, C, L): one GEMM (the imaginary part cancels in 1-D)."""
    n, c, length = x.shape
    dtype = autocast_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        y = torch.mm(x.to(dtype).reshape(n * c, length), b_real.t().to(dtype))
    return y.view(n, c, -1)
