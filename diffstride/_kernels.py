"""Kernels of spectral downsampling: masks, operators, the matrix form and the FFT form, and the
choice between them. Internal: :mod:`diffstride.functional` is the public API.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from diffstride import settings
from diffstride._plans import (
    SpectralPlan, cached_when_eager, clamp_floors, height_positions, kept_runs, memory_format_of, stride_limits,
)
from diffstride._validation import ALGORITHMS, algorithm as _check_algorithm  # noqa: F401  (ALGORITHMS: public via functional)


# --------------------------------------------------------------------------------------------
# Clips with TensorFlow's gradient rule.


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


# --------------------------------------------------------------------------------------------
# Masks and spectral operators.


def spectral_mask(
    positions: torch.Tensor, threshold: torch.Tensor, smoothness_factor: float
) -> torch.Tensor:
    """``clip((1/R) * (R + t - pos), 0, 1)`` with the inclusive gradient rule, in the reference's order."""
    ramp = (1.0 / smoothness_factor) * (smoothness_factor + threshold - positions)
    return clip_inclusive(ramp, 0.0, 1.0)


def _working_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32: the dtype of masks (from the strides) and of
    operators (from the input); half-precision inputs get float32 operators."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _axis_stride(
    stride: torch.Tensor, lower: Optional[float], upper: Optional[float]
) -> torch.Tensor:
    """The limits' clip of the stride rule (:func:`diffstride._plans.effective_strides`), gradient
    passed at the bounds included."""
    low, high = stride_limits(lower, upper, rnd=float)  # the tensor's comparison rounds to its dtype
    return clip_inclusive(stride, low, high)


def _axis_weights(
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


def _clamped(strides: torch.Tensor, size: Sequence[int], smoothness_factor: float) -> torch.Tensor:
    """The reference's in-graph view of its in-place clamp: value ``max(S, size/(size-R))``, identity gradient."""
    floors = clamp_floors(size, smoothness_factor, shared=strides.numel() == 1)
    floor = _floor_tensor(floors, strides.dtype, strides.device)
    # exactly max(S, floor) in value (``S + (max - S)`` can be one ulp off), the identity in gradient
    return torch.maximum(strides, floor).detach() + (strides - strides.detach())


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
    angle_in = (f[:, None] * m[None, :] % n_in).to(dtype) * (2 * math.pi / n_in)
    cos_in, sin_in = torch.cos(angle_in), torch.sin(angle_in)
    w = weights.to(dtype)
    if len(freqs_in) * n_out * n_in <= settings.current().direct_operator_max or torch.compiler.is_compiling():
        k = torch.arange(len(freqs_in), device=device)
        p = torch.arange(n_out, device=device)
        angle_out = (p[:, None] * k[None, :] % n_out).to(dtype) * (2 * math.pi / n_out)
        wc, ws = torch.cos(angle_out) * w, torch.sin(angle_out) * w
        return wc @ cos_in + ws @ sin_in, ws @ cos_in - wc @ sin_in
    z = torch.complex(w[:, None] * cos_in, -w[:, None] * sin_in)  # (K, n_in)
    op = torch.fft.ifft(z, n=n_out, dim=0, norm="forward")  # Σ_k z[k, m] e^{2πi k p / n_out}
    return op.real, op.imag




def _irfft_coefficients(cols: int, out_len: int, dtype: torch.dtype, device) -> torch.Tensor:
    """How often each kept rfft bin counts in a real inverse of length ``out_len``: 1 for DC and Nyquist, else 2."""
    c = torch.full((cols,), 2.0, dtype=dtype, device=device)
    c[0] = 1.0
    if out_len % 2 == 0 and cols - 1 == out_len // 2:
        c[cols - 1] = 1.0
    return c


# --------------------------------------------------------------------------------------------
# Applying the operators: two large matrix products, no complex tensors of the input's size.




def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    if not torch.amp.is_autocast_available(x.device.type):  # e.g. meta tensors
        return x.dtype
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _apply_2d(
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
    dtype = _autocast_dtype(x)
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


def _batch_block(x: torch.Tensor, pixels_per_image: int) -> int:
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
        block = _batch_block(x, height * width + 2 * h * width + h * w)
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


def _apply_1d(x: torch.Tensor, b_real: torch.Tensor) -> torch.Tensor:
    """``y = x B_rᵀ`` over the last axis of (N, C, L): one GEMM (the imaginary part cancels in 1-D)."""
    n, c, length = x.shape
    dtype = _autocast_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        y = torch.mm(x.to(dtype).reshape(n * c, length), b_real.t().to(dtype))
    return y.view(n, c, -1)


# --------------------------------------------------------------------------------------------
# The FFT form, and the choice between the two forms.


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
    if _check_algorithm(algorithm) != "auto":
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


# Blocks of the FFT form (settings.fft_block_*): the full-size spectra of a block stay small
# beside the input (the extra peak memory of forward + backward is then the output, the input's
# gradient and the kept spectrum, plus a block's temporaries: about four times the block). A
# single (sample, channel) plane is never split; small inputs are one block (splitting them
# costs time and saves nothing that matters). A 1-D plane is a single transform, which the FFT
# library runs on one thread: 1-D blocks have a floor of planes per thread; a 2-D or 3-D plane
# is many lines, spread over the threads already.


def _fft_block(planes: torch.Tensor, nd: int) -> int:
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
        block = _fft_block(planes, nd)
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


def _fft_resample(x: torch.Tensor, plan: SpectralPlan, centred_weights: Sequence[torch.Tensor],
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
    dtype = _working_dtype(x)
    out_dtype = _autocast_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        mask = col_weights.to(dtype)
        for axis, weights in enumerate(centred_weights):
            shape = [1] * nd
            shape[axis] = -1
            mask = mask * weights.to(dtype).view(shape)
        mask = mask.expand(tuple(len(r) for r in plan.centred_rows()) + (plan.cols,))
        return _FFTResample.apply(x, mask, plan, nd, dtype, out_dtype)


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
        return _fft_resample(x, plan, [row_weights], col_weights)
    height, width = x.shape[-2:]
    h, w = plan.out_size
    dtype = _working_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        a_real, a_imag = spectral_operator(height, h, plan.rows, row_weights / h, dtype)
        coeffs = _irfft_coefficients(plan.cols, w, dtype, x.device)
        b_real, b_imag = spectral_operator(width, w, range(plan.cols), coeffs * col_weights / w, dtype)
    return _apply_2d(x, a_real, a_imag, b_real, b_imag)


def spectral_resample1d(x: torch.Tensor, plan: SpectralPlan, weights: torch.Tensor, algorithm: str = "auto") -> torch.Tensor:
    """``irfft(crop(mask ⊙ rfft(x)))`` of a (N, C, L) tensor: one real matrix product, or torch.fft."""
    if choose_algorithm(x, plan, algorithm) == "fft":
        return _fft_resample(x, plan, [], weights)
    (out_len,) = plan.out_size
    dtype = _working_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        coeffs = _irfft_coefficients(plan.cols, out_len, dtype, x.device)
        b_real, _ = spectral_operator(x.shape[-1], out_len, range(plan.cols), coeffs * weights / out_len, dtype)
    return _apply_1d(x, b_real)


def spectral_resample3d(x: torch.Tensor, plan: SpectralPlan, depth_weights: torch.Tensor, row_weights: torch.Tensor,
                        col_weights: torch.Tensor, algorithm: str = "auto") -> torch.Tensor:
    """``irfftn(crop(mask ⊙ rfftn(x)))`` of a (N, C, D, H, W) tensor, by torch.fft (the only 3-D form)."""
    _check_algorithm(algorithm, 3, "inputs")
    return _fft_resample(x, plan, [depth_weights, row_weights], col_weights)


