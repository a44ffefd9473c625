"""What :func:`diffstride.convert` replaces and with what: the kinds of strided layers, their
strides and dimensionality, the pooling family of each dimensionality, the padding a shared layer
needs at stride 1, and the :class:`Change` records.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from diffstride import pooling
from diffstride._validation import per_axis


KINDS: Dict[str, Tuple[type, ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "avgpool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
    "maxpool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
}


NDIM = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
         nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}


# each family by dimensionality: a 2-D class given as pooling_cls serves 1-D and 3-D layers too
FAMILIES = [
    {1: pooling.DiffStride1d, 2: pooling.DiffStride, 3: pooling.DiffStride3d},
    {1: pooling.FixedSpectralPooling1d, 2: pooling.FixedSpectralPooling, 3: pooling.FixedSpectralPooling3d},
    {1: pooling.SpatialPooling1d, 2: pooling.SpatialPooling, 3: pooling.SpatialPooling3d},
]


ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


ADAPTIVE_FUNCTIONS = {torch.nn.functional.adaptive_avg_pool1d, torch.nn.functional.adaptive_avg_pool2d,
                       torch.nn.functional.adaptive_avg_pool3d, torch.nn.functional.adaptive_max_pool1d,
                       torch.nn.functional.adaptive_max_pool2d, torch.nn.functional.adaptive_max_pool3d}


DEFAULT_SIZES = {1: (4096,), 2: (224, 224), 3: (16, 112, 112)}


# functional poolings that a block's forward may call with a stride: (kind, module class, argument names)
_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


FUNCTIONAL_POOLS = {
    F.max_pool1d: ("maxpool", nn.MaxPool1d, _MAX_ARGS), F.max_pool2d: ("maxpool", nn.MaxPool2d, _MAX_ARGS),
    F.max_pool3d: ("maxpool", nn.MaxPool3d, _MAX_ARGS), F.avg_pool1d: ("avgpool", nn.AvgPool1d, _AVG_ARGS[:5]),
    F.avg_pool2d: ("avgpool", nn.AvgPool2d, _AVG_ARGS), F.avg_pool3d: ("avgpool", nn.AvgPool3d, _AVG_ARGS),
}


class ConversionError(ValueError):
    """The converted model would fail when its strides move (or already at the initial strides)."""


@dataclasses.dataclass
class Change:
    """One downsampling layer that :func:`convert` replaced."""

    name: str
    kind: str
    strides: Tuple[int, ...]
    pooling: str  # name of the pooling instance (shared ones have one name)
    shared_with: Optional[str] = None

    def __str__(self) -> str:
        if self.kind == "blur":  # the whole blur-then-subsample layer is replaced
            text = f"{self.name}: blur stride {self.strides} -> {self.pooling}"
        else:
            text = f"{self.name}: {self.kind} stride {self.strides} -> stride 1 + {self.pooling}"
        return text + (f" (shared with {self.shared_with})" if self.shared_with else "")


def _to_tuple(value, ndim: int) -> Tuple[int, ...]:
    """A layer's kernel, dilation or padding attribute per axis (these may be 0: not strides)."""
    if isinstance(value, int):
        return (value,) * ndim
    return tuple(int(v) for v in value)


def strides_of(module: nn.Module) -> Tuple[int, ...]:
    stride = module.stride if module.stride is not None else module.kernel_size  # pools: None means kernel
    return tuple(int(v) for v in per_axis(stride, ndim_of(module), "stride"))


# blur-then-subsample layers (timm's BlurPool2d, antialiased-cnns' BlurPool, kornia's BlurPool2D):
# the anti-aliasing slot itself, replaced whole by the pooling layer (a learnable low-pass)
_BLUR_NAMES = {"BlurPool2d": 2, "BlurPool2D": 2, "BlurPool": 2, "BlurPool1d": 1, "BlurPool1D": 1}


def is_blur(module: nn.Module) -> bool:
    return type(module).__name__ in _BLUR_NAMES and hasattr(module, "stride")


def ndim_of(module: nn.Module) -> int:
    if is_blur(module):
        return _BLUR_NAMES[type(module).__name__]
    for cls, n in NDIM.items():
        if isinstance(module, cls):
            return n
    raise TypeError(f"not a convertible layer: {type(module).__name__}")


def kind_of(module: nn.Module, layers: Sequence[str]) -> Optional[str]:
    if is_blur(module):
        return "blur" if "blur" in layers else None
    return next((k for k in layers if k in KINDS and isinstance(module, KINDS[k])), None)


def pooling_strides(layer: nn.Module) -> Optional[Tuple[int, ...]]:
    """A pooling layer's current strides as integers, or None when one is not an integer."""
    values = layer.strides.tolist() if torch.is_tensor(layer.strides) else list(layer.strides)
    return tuple(int(v) for v in values) if all(float(v).is_integer() for v in values) else None


def is_downsampling(module: nn.Module, layers: Sequence[str]) -> bool:
    return kind_of(module, layers) is not None and any(s != 1 for s in strides_of(module))


def same_padding(module: nn.Module, ndim: int) -> Optional[nn.Module]:
    """Padding at the end of each axis that makes the stride-1 layer keep the input size ('same',
    as the reference's layers), for layers that share a pooling instance: a kernel-2 stride-2
    pooling at stride 1 would otherwise lose a pixel, and its output would no longer meet the
    other branch's (timm's resnet50d). None when nothing is needed."""
    kernel = _to_tuple(module.kernel_size, ndim)
    dilation = _to_tuple(getattr(module, "dilation", 1), ndim)
    padding = module.padding
    padding = (0,) * ndim if padding == "valid" else _to_tuple(padding, ndim)
    extra = [max(0, d * (k - 1) - 2 * p) for k, d, p in zip(kernel, dilation, padding)]
    if not any(extra):
        return None
    pad = tuple(v for e in reversed(extra) for v in (0, e))  # F.pad order: last axis first
    if isinstance(module, KINDS["conv"]):
        return (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)[ndim - 1](pad, 0.0)
    return (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)[ndim - 1](pad)  # max/avg unchanged


def family_of(pooling_cls: Callable) -> Optional[Dict[int, type]]:
    return next((family for family in FAMILIES if pooling_cls in family.values()), None)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class ResizeLike(nn.Module):
    """``F.interpolate(x, size=like.shape[2:])``: what :func:`convert` puts in place of an
    upsampling by a fixed ``scale_factor`` whose output meets ``like`` (HRNet's fuse layers), so
    that it follows the other branch's size once strides are learned."""

    def __init__(self, mode: str = "nearest", align_corners: Optional[bool] = None):
        super().__init__()
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=tuple(like.shape[2:]), mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
