"""Downsampling layers: DiffStride (learnable strides) and the reference's two baselines
(defined in :mod:`diffstride._fixed_pooling`, public here), and helpers for models that hold them.

Names, arguments and defaults follow google-research/diffstride's ``pooling.py`` so that its Gin
configs work unchanged; the maths lives in :mod:`diffstride.functional`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from diffstride import functional as F
from diffstride import _validation as check
from torch._subclasses.fake_tensor import FakeTensor

from diffstride._fixed_pooling import (FixedSpectralPooling, FixedSpectralPooling1d, FixedSpectralPooling2d,
                                       FixedSpectralPooling3d, SpatialPooling, SpatialPooling1d, SpatialPooling2d,
                                       SpatialPooling3d)
from diffstride._plans import clamp_floors, is_exporting, spatial_size
from diffstride._pooling_base import PoolingLayer, Strides, check_strides, from_channels_first, to_channels_first

__all__ = [
    "DiffStride",
    "DiffStride1d",
    "DiffStride2d",
    "DiffStride3d",
    "FixedSpectralPooling",
    "FixedSpectralPooling1d",
    "FixedSpectralPooling2d",
    "FixedSpectralPooling3d",
    "SpatialPooling",
    "SpatialPooling1d",
    "SpatialPooling2d",
    "SpatialPooling3d",
    "PoolingLayer",
    "param_groups",
    "pooling_layers",
    "sync_plans",
]


# --------------------------------------------------------------------------------------------
# The surface every pooling layer shares.


# --------------------------------------------------------------------------------------------
# DiffStride.


class _DiffStrideNd(PoolingLayer):
    """DiffStride in any dimensionality; a subclass only sets ``_ndim`` (and documents itself)."""

    _ndim: int

    def __init__(
        self,
        strides: Strides = 2.0,
        smoothness_factor: float = 4.0,
        cropping: bool = True,
        trainable: bool = True,
        shared_stride: bool = False,
        lower_limit_stride: Optional[float] = None,
        upper_limit_stride: Optional[float] = None,
        data_format: str = "channels_first",
        algorithm: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        # the functional op's checks, run early on the arguments
        self._init_strides = check_strides(strides, self._ndim)
        self.algorithm = check.algorithm(algorithm, self._ndim)
        self.smoothness_factor = check.smoothness_factor(smoothness_factor)
        if shared_stride and len(set(self._init_strides)) > 1:
            raise ValueError(f"shared_stride=True needs equal strides, but got {tuple(self._init_strides)}")
        self.lower_limit_stride, self.upper_limit_stride = check.stride_limits(lower_limit_stride, upper_limit_stride)
        self.cropping = bool(cropping)
        self.shared_stride = bool(shared_stride) or self._ndim == 1
        self.data_format = check.data_format(data_format)
        n = 1 if self.shared_stride else self._ndim
        self.strides = nn.Parameter(
            torch.empty(n, device=device, dtype=dtype or torch.float32), requires_grad=bool(trainable))
        # Python copy of the stride values as last read (clamped): what a frozen layer plans from
        # inside torch.compile, and every layer under torch.export or on meta / fake tensors
        # (no device read, so fullgraph=True works).
        self._known_values: Tuple[float, ...] = self._init_strides[: self.strides.numel()]
        # the sizes this layer has planned for, and the plans compiled graphs of a trainable layer
        # use between two calls of :func:`sync_plans` (None: not synced, plans read the strides)
        self._sizes_seen: set = set()
        self._synced_plans: Optional[dict] = None
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_after_load_state_dict)  # a module-level function: picklable

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.strides.copy_(torch.tensor(self._init_strides[: self.strides.numel()], dtype=self.strides.dtype))
        self._known_values = self._init_strides[: self.strides.numel()]
        self._sync_known_values()

    @property
    def trainable(self) -> bool:
        return self.strides.requires_grad

    def stride_values(self) -> Tuple[float, ...]:
        """The strides as Python floats, one per spatial axis (a shared stride repeated); reads
        the tensor (a device sync)."""
        values = F.stride_values(self.strides)
        return values * self._ndim if len(values) == 1 else values

    def stride_product(self) -> torch.Tensor:
        """``Π S_i`` over the spatial axes, differentiable (``S ** ndim`` for a shared stride)."""
        s = self.strides.float()
        return s[0] ** self._ndim if s.numel() == 1 else torch.prod(s)

    def freeze_(self) -> "_DiffStrideNd":
        """Fixes the strides: the parameter becomes a buffer (no stride parameters left, so an
        optimizer ignores them) and the output size is planned from Python values (static shapes
        for ``torch.compile(fullgraph=True)`` and ONNX export). Same outputs."""
        if isinstance(self.strides, nn.Parameter):
            values = self.strides.detach().clone()
            del self._parameters["strides"]
            self.register_buffer("strides", values)
            self._sync_known_values()
            self._synced_plans = None
        return self

    def _sync_known_values(self) -> None:
        """Reads the strides into the Python mirror (a device sync), unless they hold no data
        (meta or fake tensors: the mirror keeps what it had)."""
        if not _has_data(self.strides):
            return
        self._known_values = F.stride_values(self.strides)

    def _check_size(self, size: Tuple[int, ...]) -> None:
        check.diffstride_size(size, self.smoothness_factor, type(self).__name__)

    def _clamp_(self, size: Tuple[int, ...], values: Tuple[float, ...]) -> Tuple[float, ...]:
        """The reference's in-place clamp ``S = max(S, size / (size - R))``, on the stride values
        already read; the parameter is written only when a value changes. (Writing it at every
        call would bump its version between the two calls of a pooling layer shared by a
        residual block's branches, which compiled backward graphs refuse.)"""
        floors = clamp_floors(size, self.smoothness_factor, shared=self.strides.numel() == 1)
        clamped = tuple(max(v, m) for v, m in zip(values, floors))
        # (no tensor to write into on meta / fake tensors, nor inside a traced graph)
        if clamped != values and _has_data(self.strides) and not torch.compiler.is_compiling():
            with torch.no_grad():
                self.strides.copy_(torch.tensor(clamped, dtype=self.strides.dtype))
            self._known_values = clamped
        return clamped

    def _current_plan(self, size: Tuple[int, ...]) -> F.SpectralPlan:
        """Applies the in-place clamp and plans the output for ``size``: from the strides tensor
        (a device read) in eager code; inside compiled graphs from Python values (frozen layers,
        synced plans of trainable ones: :func:`sync_plans`) or, failing those, outside the graph."""
        compiling = torch.compiler.is_compiling()
        if not compiling and _has_data(self.strides):
            return _plan_from_tensor(self, size)
        if self.trainable and compiling and not is_exporting():
            if self._synced_plans is not None and size in self._synced_plans:
                return self._synced_plans[size]  # Python ints: no break (fullgraph=True works)
            return _plan_outside_graphs(self, size)
        # frozen strides, torch.export at the current strides, meta / fake tensors: the Python
        # values, folded into the graph
        return self._plan(size, self._clamp_(size, self._known_values))

    def _plan(self, size: Tuple[int, ...], values: Sequence[float]) -> F.SpectralPlan:
        return F.diffstride_plan(size, values, self.smoothness_factor, self.cropping, self.lower_limit_stride,
                                 self.upper_limit_stride, float64=self.strides.dtype == torch.float64)

    def output_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """Spatial output size for a spatial ``input_size`` at the current strides (the layer is not run).

        ``input_size`` is ``(H, W)`` (2-D) or ``(L,)`` / ``L`` (1-D); the strides are not modified.
        """
        size = check.spatial_size(input_size, self._ndim)
        self._check_size(size)
        return self._plan(size, F.stride_values(self.strides)).out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_first(x, self._ndim, self.data_format, type(self).__name__)
        size = spatial_size(x)
        self._check_size(size)
        plan = self._current_plan(size)
        y = self._downsample(x, plan)
        return from_channels_first(y, self.data_format)

    def _downsample(self, x: torch.Tensor, plan: F.SpectralPlan) -> torch.Tensor:
        # the layer checked its input and arguments: the op's core, without its checks
        # the plan clamped the parameter in place: the in-graph clamp is the identity (skipped)
        return F.diff_stride_unchecked(x, self.strides, self.smoothness_factor, self.lower_limit_stride,
                                       self.upper_limit_stride, plan, self.algorithm, clamped=True)

    def extra_repr(self) -> str:
        values = ", ".join(f"{v:.3g}" for v in self.strides.detach().float().cpu().tolist())
        text = f"strides=({values}{',' if self.strides.numel() == 1 else ''}), smoothness_factor={self.smoothness_factor:g}"
        text += f", cropping={self.cropping}"
        if not self.trainable:
            text += ", trainable=False"
        if self.shared_stride and self._ndim >= 2:
            text += ", shared_stride=True"
        if self.lower_limit_stride is not None:
            text += f", lower_limit_stride={self.lower_limit_stride:g}"
        if self.upper_limit_stride is not None:
            text += f", upper_limit_stride={self.upper_limit_stride:g}"
        if self.data_format != "channels_first":
            text += f", data_format={self.data_format!r}"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        return text


def _after_load_state_dict(module: "_DiffStrideNd", incompatible_keys) -> None:
    module._sync_known_values()
    module._synced_plans = None if module._synced_plans is None else {}


def _has_data(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read: not a meta tensor, not a fake tensor (torch.export,
    FakeTensorMode)."""
    return not t.is_meta and not isinstance(t, FakeTensor)


def _plan_from_tensor(layer: "_DiffStrideNd", size: Tuple[int, ...]) -> F.SpectralPlan:
    """Reads the strides (a device sync), applies the in-place clamp and plans the output."""
    values = layer._clamp_(size, F.planned_values(layer.strides, type(layer).__name__))
    layer._known_values = values
    layer._sizes_seen.add(size)
    return layer._plan(size, values)


# The same, kept out of compiled graphs (a compiled model then recompiles only when the plan
# changes, not at every stride update). torch._disable_dynamo is torch.compiler.disable with the
# import of torch._dynamo (over a second) deferred to the first compiled call: eager code never
# pays it.
_plan_outside_graphs = torch._disable_dynamo(_plan_from_tensor)


class DiffStride(_DiffStrideNd):
    """Spectral downsampling with learnable strides (DiffStride), for 2-D inputs.

    Multiplies the input's spectrum by a smooth low-pass mask whose width is set by the strides
    ``(S_h, S_w)``, crops the frequencies the mask zeroes, and returns to the spatial domain.
    The strides receive gradients and are trained with the rest of the network. Exactly the
    reference's layer (google-research/diffstride), including its output size ``≈ size / S + 2R``,
    its in-place clamp ``S >= size / (size - R)`` and TensorFlow's gradient at clip bounds; it is
    computed as two real matrix products for small maps or with torch.fft for large ones
    (``algorithm``), tested against the reference's outputs and gradients and against a float64
    FFT oracle.

    Args:
        strides: initial strides ``(S_h, S_w)`` or one number for both; finite, >= 1.
        smoothness_factor: width ``R`` of the mask's ramp, in frequency bins (> 0).
        cropping: drop the frequencies the mask zeroes (the output shrinks); if False, the output
            keeps the input's height and ``2 * (W // 2)`` width.
        trainable: whether the strides receive gradients.
        shared_stride: one stride for both axes (``strides`` then has shape (1,)).
        lower_limit_stride, upper_limit_stride: clip of the strides inside the graph
            (default 1 and none).
        data_format: ``'channels_first'`` (N, C, H, W) or ``'channels_last'`` (N, H, W, C).
        algorithm: ``'auto'`` (the matrix form for small maps, the FFT form for large ones, by a
            cost model; see :mod:`diffstride.settings`), ``'matmul'`` or ``'fft'``; same values
            and gradients.
        device, dtype: of the strides parameter (float32 by default; float64 strides give a
            float64 mask).

    Shape:
        - Input: (N, C, H, W) with H, W > smoothness_factor (or (N, H, W, C)).
        - Output: (N, C, h, w), see :meth:`output_size`; the input's memory format is kept.

    Examples:
        >>> layer = DiffStride(strides=(2, 4))
        >>> layer(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 3, 40, 24])
        >>> layer
        DiffStride(strides=(2, 4), smoothness_factor=4, cropping=True)
    """

    _ndim = 2


class DiffStride1d(_DiffStrideNd):
    """DiffStride for 1-D inputs (N, C, L): time series, audio frames.

    The width rule of the 2-D layer alone: keeps rfft bins whose mask
    ``clip((R + L/(2S) + 1 - n)/R, 0, 1)`` is > 0 and inverts them with ``irfft`` (output length
    ``2 * (kept - 1)``). ``strides`` is one number (the parameter has shape (1,)).

    Shape:
        - Input: (N, C, L) with L > smoothness_factor (or (N, L, C) with ``data_format='channels_last'``).
        - Output: (N, C, l).

    Examples:
        >>> DiffStride1d(strides=4)(torch.rand(2, 8, 1000)).shape
        torch.Size([2, 8, 258])
    """

    _ndim = 1

    def __init__(self, strides: Strides = 2.0, *args, **kwargs) -> None:
        kwargs.pop("shared_stride", None)
        super().__init__(strides, *args, **kwargs)


class DiffStride3d(_DiffStrideNd):
    """DiffStride for volumes (N, C, D, H, W): video, CT and MRI.

    The reference's 2-D rules per axis: depth and height are centred axes (as the 2-D height),
    width is the real-FFT axis (as the 2-D width, so the output width is even). Strides
    ``(S_d, S_h, S_w)`` or one number; ``shared_stride=True`` learns one value for all three.
    Computed with torch.fft (the separable matrix form is 1-D and 2-D only). Tested against a
    float64 FFT oracle and with gradcheck.

    Shape:
        - Input: (N, C, D, H, W) with each size > smoothness_factor (or (N, D, H, W, C) with
          ``data_format='channels_last'``; ``torch.channels_last_3d`` tensors keep their format).
        - Output: (N, C, d, h, w), see :meth:`output_size`.

    Examples:
        >>> DiffStride3d(strides=(1, 2, 2))(torch.rand(1, 2, 8, 32, 32)).shape
        torch.Size([1, 2, 8, 24, 24])
    """

    _ndim = 3


# --------------------------------------------------------------------------------------------
# Baselines.


DiffStride2d = DiffStride

_POOLING_TYPES = (PoolingLayer,)


# --------------------------------------------------------------------------------------------
# Helpers for models that contain these layers.


def pooling_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` for every pooling layer of ``model``, in registration order, each once."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _POOLING_TYPES)]


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay: Optional[Callable[[nn.Module, str, nn.Parameter], bool]] = None,
) -> List[dict]:
    """Optimizer parameter groups: weight decay on weights, none on strides, norms and biases.

    By default a parameter is decayed when it has two or more dimensions (convolution and
    linear weights) and is not a DiffStride ``strides``; pass ``decay(module, name, param)`` to
    choose otherwise (strides are never decayed). Parameters shared between modules appear once.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), DiffStride(strides=2.0), nn.BatchNorm2d(8))
        >>> decayed, not_decayed = param_groups(model, 5e-4)
        >>> [tuple(p.shape) for p in decayed["params"]]
        [(8, 3, 3, 3)]
        >>> opt = torch.optim.SGD([decayed, not_decayed], lr=0.1, momentum=0.9)
    """
    decayed, not_decayed, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            is_stride = isinstance(module, _DiffStrideNd) and name == "strides"
            wants = (decay(module, name, param) if decay is not None else param.dim() >= 2)
            (decayed if wants and not is_stride else not_decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def sync_plans(model: nn.Module, enabled: bool = True) -> None:
    """Reads the strides of every trainable DiffStride layer of ``model`` (one device read for
    all), applies the reference's in-place clamp, and fixes the plans (which bins are kept, the
    output sizes) that compiled graphs use until the next call: a ``torch.compile``d model then
    runs as one graph, ``fullgraph=True`` and CUDA graphs (``mode="reduce-overhead"``) included,
    recompiling only when a plan changes. The masks inside the graph stay functions of the live
    strides (their gradients are exact); only the kept bins come from the last call.

    Call it after every optimizer step (the training loop does when ``compile = True``): between
    two calls a plan may lag behind strides that crossed a bin. ``enabled=False`` returns the
    layers to planning inside the call (a graph break per layer when compiled). Eager calls never
    use synced plans. Covers the sizes each layer has been called with (a layer's first compiled
    call at a new size plans outside the graph once).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DiffStride(strides=2.0))
        >>> _ = net(torch.rand(2, 3, 32, 32))          # eager: the layer learns its sizes
        >>> sync_plans(net)
        >>> compiled = torch.compile(net, fullgraph=True, backend="eager")
        >>> compiled(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 8, 24, 24])
    """
    layers = [m for _, m in pooling_layers(model) if isinstance(m, _DiffStrideNd) and m.trainable]
    if not enabled:
        for layer in layers:
            layer._synced_plans = None
        return
    live = [layer for layer in layers if _has_data(layer.strides)]
    if not live:
        return
    flat = torch.cat([layer.strides.detach().to(torch.float64).reshape(-1) for layer in live]).cpu().tolist()
    start = 0
    for layer in live:
        n = layer.strides.numel()
        values = tuple(float(v) for v in flat[start:start + n])
        start += n
        # (float32 strides read through float64: the same values, exactly)
        F.refuse_non_finite(values, type(layer).__name__)
        old = layer._synced_plans or {}
        plans = {}
        for size in layer._sizes_seen:
            plan = layer._plan(size, layer._clamp_(size, values))
            plans[size] = old[size] if old.get(size) == plan else plan  # the same object: no recompile
        layer._known_values = values
        layer._synced_plans = plans
