"""Pre-activation ResNets of the reference (google-research/diffstride ``resnet.py``) in PyTorch.

Strided downsampling is either a strided convolution (``pooling_cls=None``) or a stride-1
convolution followed by a pooling layer (``DiffStride``, ``FixedSpectralPooling``, ...). In a
projecting residual layer one pooling instance is shared by the main branch and the shortcut,
so that both are downsampled by the same learned strides.

The layout is the reference's current one, checked against its own outputs
(``tests/test_resnet_reference.py``):

- residual layer: BN → ReLU → conv → pool → BN → ReLU → conv, plus the shortcut (identity, or a
  1x1 conv → the same pool when the layer projects); no ReLU after the sum, no BN on the shortcut;
- stem: conv (→ pool), nothing after it;
- head: BN → ReLU → global average pool → dense.

``dims=1`` builds the same network on (N, C, L) inputs (``Conv1d``, ``BatchNorm1d`` and the 1-D
pooling layers), for time series and audio.

This module imports only torch and numpy; the training example registers the reference's Gin
names for it (``resnet.Resnet.pooling_cls``, ``resnet.resnet18.strides``, ``batch_norm.momentum``,
...) in :mod:`diffstride.train.configurables`.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from diffstride._validation import per_axis
from diffstride.pooling import param_groups

__all__ = [
    "ResidualLayer", "ResnetBlock", "Resnet", "resnet18", "resnet56", "RESNET18", "RESNET18_STRIDES", "RESNET56",
    "RESNET56_STRIDES", "batch_norm",
    "parse_strides", "l2_param_groups",
]

Number = Union[int, float]
Stride = Union[Number, Tuple[Number, ...]]


def parse_strides(strides: Union[str, Sequence[Stride]], name: str = "strides") -> List[Stride]:
    """Strides as a list, from a list or from the string form ``'1, 1, 3, 2, 3'`` (or ``'[1, 1, 2]'``)."""
    if isinstance(strides, str):
        text = strides.strip().strip("[]()")
        try:
            return [float(s) if "." in s else int(s) for s in (p.strip() for p in text.split(",")) if s]
        except ValueError:
            raise ValueError(f"{name} must be numbers separated by commas, like '1, 1, 3, 2, 3', but got {strides!r}") from None
    try:
        return list(strides)
    except TypeError:
        raise TypeError(f"{name} must be a list of strides or a string like '1, 1, 2, 2, 2', but got {strides!r}") from None


def _conv_stride(stride: Stride, dims: int) -> Tuple[int, ...]:
    """Integer strides for a strided convolution (no pooling class)."""
    values = per_axis(stride, dims, "stride")
    if any(float(v) != int(v) for v in values):
        raise ValueError(
            f"strided convolutions (pooling_cls=None) need whole-number strides, but got {stride!r}; "
            "use a pooling class such as DiffStride for fractional strides")
    return tuple(int(v) for v in values)


def _same_pads(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> List[Tuple[int, int]]:
    """TensorFlow's 'same' padding per axis: ``(before, after)``, the extra one after."""
    pads = []
    for size, k, s in zip(sizes, kernel, stride):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


class _SamePadding:
    """Forward of a convolution with TensorFlow's 'same' padding (the extra row/column after)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _same_pads(x.shape[2:], self.kernel_size, self.stride)
        if all(before == after for before, after in pads):
            return self._conv_forward_padded(x, tuple(before for before, _ in pads))
        flat = [p for before_after in reversed(pads) for p in before_after]  # F.pad: last axis first
        return self._conv_forward_padded(F.pad(x, flat), (0,) * len(pads))

    def _conv_forward_padded(self, x, padding):
        conv = F.conv1d if isinstance(self, nn.Conv1d) else F.conv2d
        return conv(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class Conv1dSame(_SamePadding, nn.Conv1d):
    """``Conv1d`` with TensorFlow's 'same' padding."""


class Conv2dSame(_SamePadding, nn.Conv2d):
    """``Conv2d`` with TensorFlow's 'same' padding: the extra row/column goes at the bottom/right.

    For stride 1 and odd kernels this is ordinary symmetric padding; for stride 2 on an even
    size, TensorFlow pads (0, 1) where PyTorch's ``padding=1`` would pad (1, 1).
    """


def _check_dims(dims: int) -> int:
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 (inputs (N, C, L)) or 2 (inputs (N, C, H, W)), but got {dims!r}")
    return dims


def _he_normal_(weight: torch.Tensor) -> None:
    """Keras 'he_normal': a normal truncated at 2 sigma, sigma scaled so that the std is sqrt(2 / fan_in)."""
    fan_in = weight[0].numel() if weight.dim() > 2 else weight.shape[1]
    sigma = math.sqrt(2.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at ±2
    nn.init.trunc_normal_(weight, std=sigma, a=-2 * sigma, b=2 * sigma)


def conv(in_channels: int, filters: int, kernel_size: int, stride: Sequence[int] = 1, dims: int = 2) -> nn.Module:
    """A bias-free convolution with TensorFlow's 'same' padding and He-normal init, as the reference's ``conv2d``."""
    cls = Conv2dSame if _check_dims(dims) == 2 else Conv1dSame
    layer = cls(in_channels, filters, kernel_size, stride=stride, bias=False)
    _he_normal_(layer.weight)
    return layer


def batch_norm(num_features: int, momentum: float = 0.9, epsilon: float = 1e-5, dims: int = 2) -> nn.Module:
    """BatchNorm with Keras' arguments: Keras ``momentum`` m is PyTorch's ``1 - m``."""
    cls = nn.BatchNorm2d if _check_dims(dims) == 2 else nn.BatchNorm1d
    return cls(num_features, eps=epsilon, momentum=1.0 - momentum)


def _make_pooling(pooling_cls: Callable[..., nn.Module], strides: Tuple[Number, ...], dims: int) -> nn.Module:
    layer_dims = getattr(pooling_cls, "ndim", None)  # a class attribute, or the instances' property
    if not isinstance(layer_dims, int):
        layer_dims = getattr(pooling_cls, "_ndim", dims)
    if layer_dims != dims:
        raise ValueError(
            f"pooling_cls {getattr(pooling_cls, '__name__', pooling_cls)!r} is a {layer_dims}-D layer, but the "
            f"network is {dims}-D; use the {dims}-D layer (e.g. pooling.DiffStride{'1d' if dims == 1 else ''})")
    return pooling_cls(strides=strides)


class ResidualLayer(nn.Module):
    """A pre-activation residual layer: identity (``project=False``) or projecting.

    ``x → BN → ReLU → conv → pool → BN → ReLU → conv``, plus ``x`` (identity) or
    ``pool(conv1x1(x))`` (projecting); the sum is the output, with no activation after it.

    A projecting layer downsamples with ``strides``: with a strided first convolution and a
    strided 1x1 shortcut if ``pooling_cls`` is None, otherwise with stride-1 convolutions each
    followed by the same ``pooling_cls(strides=strides)`` instance. An identity layer never
    downsamples (its ``strides`` and ``pooling_cls`` are ignored, as in the reference).
    """

    def __init__(
        self,
        in_filters: int,
        filters: int,
        kernel_size: int = 3,
        strides: Stride = 1,
        pooling_cls: Optional[Callable[..., nn.Module]] = None,
        project: bool = False,
        channels_first: bool = True,
        weight_decay: float = 5e-3,
        dims: int = 2,
        norm_layer: Callable[..., nn.Module] = batch_norm,
    ) -> None:
        super().__init__()
        dims = _check_dims(dims)
        if not project and in_filters != filters:
            raise ValueError(f"an identity residual layer needs in_filters == filters, but got {in_filters} and {filters}")
        pooling_cls = pooling_cls if project else None
        strides = per_axis(strides, dims, "strides") if project else (1,) * dims
        if pooling_cls is not None:
            conv_strides = (1,) * dims
            self.pooling = _make_pooling(pooling_cls, strides, dims)
        else:
            conv_strides = _conv_stride(strides, dims)
            self.pooling = None
        self.bn1 = norm_layer(in_filters, dims=dims)
        self.strided_conv = conv(in_filters, filters, kernel_size, conv_strides, dims)
        self.bn2 = norm_layer(filters, dims=dims)
        self.unstrided_conv = conv(filters, filters, kernel_size, 1, dims)
        self.shortcut_conv = conv(in_filters, filters, 1, conv_strides, dims) if project else None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pooling is None else self.pooling(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._pool(self.strided_conv(F.relu(self.bn1(x))))
        y = self.unstrided_conv(F.relu(self.bn2(y)))
        shortcut = x if self.shortcut_conv is None else self._pool(self.shortcut_conv(x))
        return y + shortcut


class ResnetBlock(nn.Sequential):
    """Residual layers sharing a number of filters; only the first may project (and downsample)."""

    def __init__(
        self,
        in_filters: int,
        filters: int,
        strides: Stride,
        num_layers: int = 2,
        project_first: bool = True,
        **kwargs,
    ) -> None:
        layers = []
        for i in range(num_layers):
            project = project_first and i == 0
            layers.append(ResidualLayer(in_filters if i == 0 else filters, filters, strides=strides, project=project, **kwargs))
        super().__init__(*layers)


class Resnet(nn.Module):
    """A generic pre-activation ResNet: stem, one block per (filters, stride), head.

    Args:
        filters: filters of the stem, then of each block.
        strides: stride of the stem, then of each block's first layer; numbers or per-axis
            tuples, or a string like ``'1, 1, 3, 2, 3'``.
        num_output_classes: size of the dense output.
        output_activation: None (logits) or ``'softmax'`` (probabilities, as the reference's recipe).
        id_only: indices of blocks whose first layer does not project (resnet18: ``[0]``).
        channels_first: accepted for the reference's configs; inputs are always channels-first
            (use ``model.to(memory_format=torch.channels_last)`` for that layout).
        pooling_cls: None for strided convolutions, or a pooling class called as
            ``pooling_cls(strides=...)`` (a 1-D one, e.g. ``pooling.DiffStride1d``, when ``dims=1``).
        weight_decay: the reference's Keras L2 factor on conv and dense kernels and the dense
            bias, applied by the optimizer groups of :func:`l2_param_groups` (gradient ``2·wd·w``).
        in_channels: input channels (3 for CIFAR, 1 for MNIST).
        dims: 2 for images (N, C, H, W), 1 for sequences (N, C, L).
        norm_layer: builds each normalisation as ``norm_layer(num_features, dims=dims)``; default
            :func:`batch_norm` (the recipe's momentum and epsilon).
        **kwargs: passed to every :class:`ResidualLayer` (``num_layers``, ``kernel_size``).

    Shape:
        (N, in_channels, *spatial) → (N, num_output_classes)

    Examples:
        >>> from diffstride import pooling
        >>> model = Resnet([16, 32, 64], [1, 2, 2], num_output_classes=10, pooling_cls=pooling.DiffStride,
        ...                num_layers=1, in_channels=1)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        filters: Sequence[int],
        strides: Union[str, Sequence[Stride]],
        num_output_classes: int,
        output_activation: Optional[str] = None,
        id_only: Sequence[int] = (),
        channels_first: bool = True,
        pooling_cls: Optional[Callable[..., nn.Module]] = None,
        weight_decay: float = 5e-3,
        in_channels: int = 3,
        dims: int = 2,
        norm_layer: Callable[..., nn.Module] = batch_norm,
        **kwargs,
    ) -> None:
        super().__init__()
        self.dims = dims = _check_dims(dims)
        strides = parse_strides(strides)
        filters = list(filters)
        if len(filters) != len(strides):
            raise ValueError(f"the number of filters ({len(filters)}) must match the number of strides ({len(strides)}): "
                             f"filters={filters}, strides={strides}")
        self.strides = strides  # as given: what the run's metrics and reports show
        strides = [per_axis(s, dims, f"strides[{i}]") for i, s in enumerate(strides)]
        if output_activation not in (None, "softmax", "linear"):
            raise ValueError(f"output_activation must be None, 'linear' (logits) or 'softmax', but got {output_activation!r}")
        self.output_activation = output_activation
        self.weight_decay = weight_decay
        if pooling_cls is None:
            self.stem_conv = conv(in_channels, filters[0], 3, _conv_stride(strides[0], dims), dims)
            self.stem_pooling = None
        else:
            self.stem_conv = conv(in_channels, filters[0], 3, 1, dims)
            self.stem_pooling = _make_pooling(pooling_cls, strides[0], dims)
        blocks = []
        for i, (in_f, f, s) in enumerate(zip(filters[:-1], filters[1:], strides[1:])):
            blocks.append(ResnetBlock(in_f, filters=f, strides=s, project_first=i not in id_only,
                                      pooling_cls=pooling_cls, weight_decay=weight_decay, dims=dims,
                                      norm_layer=norm_layer, **kwargs))
        self.blocks = nn.Sequential(*blocks)
        self.head_bn = norm_layer(filters[-1], dims=dims)
        self.fc = nn.Linear(filters[-1], num_output_classes)
        _he_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            layout = "(N, C, H, W)" if self.dims == 2 else "(N, C, L)"
            raise ValueError(f"this {self.dims}-D Resnet expects an {layout} input, but got shape {tuple(x.shape)}")
        x = self.stem_conv(x)
        if self.stem_pooling is not None:
            x = self.stem_pooling(x)
        x = self.blocks(x)
        x = F.relu(self.head_bn(x))
        logits = self.fc(x.mean(dim=tuple(range(2, x.dim()))))
        return logits.softmax(dim=-1) if self.output_activation == "softmax" else logits


# The reference's two networks, as data: Resnet(strides=..., **RESNET18, **kwargs).
RESNET18 = dict(filters=[64, 64, 128, 256, 512], id_only=[0], num_layers=2, kernel_size=3)
RESNET18_STRIDES = [1, 1, 2, 2, 2]
RESNET56 = dict(filters=[16, 16, 32, 64], num_layers=9, kernel_size=3)
RESNET56_STRIDES = [1, 1, 2, 2]


def resnet18(strides: Optional[Union[str, Sequence[Stride]]] = None, **kwargs) -> Resnet:
    """ResNet-18 of the reference: filters [64, 64, 128, 256, 512], strides [1, 1, 2, 2, 2], 2 layers a block."""
    return Resnet(strides=RESNET18_STRIDES if strides is None else strides, **RESNET18, **kwargs)


def resnet56(strides: Optional[Union[str, Sequence[Stride]]] = None, **kwargs) -> Resnet:
    """ResNet-56 of the reference: filters [16, 16, 32, 64], strides [1, 1, 2, 2], 9 layers a block."""
    return Resnet(strides=RESNET56_STRIDES if strides is None else strides, **RESNET56, **kwargs)


def l2_param_groups(model: nn.Module, weight_decay: Optional[float] = None) -> List[dict]:
    """Optimizer groups reproducing the reference's Keras L2 regulariser.

    Keras adds ``wd · Σ w²`` to the loss for conv kernels, dense kernels and the dense bias,
    i.e. a gradient ``2·wd·w``: the same as SGD's ``weight_decay = 2·wd`` on exactly those
    parameters. BatchNorm parameters and DiffStride strides are not decayed.
    """
    wd = getattr(model, "weight_decay", 0.0) if weight_decay is None else weight_decay
    decayed = lambda module, name, p: isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))  # noqa: E731
    return param_groups(model, 2.0 * wd, decay=decayed)


def __getattr__(name: str):
    """``resnet.load_reference_weights``, the name before the port had a module of its own:
    :func:`diffstride.keras_weights.load_reference_weights` (which imports this module; this
    one does not import it, so that the model does not depend on its Keras port)."""
    if name == "load_reference_weights":
        import importlib
        import warnings

        warnings.warn("diffstride.resnet.load_reference_weights moved to diffstride.keras_weights.load_reference_weights",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module("diffstride.keras_weights").load_reference_weights
    raise AttributeError(f"module 'diffstride.resnet' has no attribute {name!r}")
