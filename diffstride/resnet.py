"""Pre-activation ResNets of the reference (google-research/diffstride ``resnet.py``) in PyTorch.

Strided downsampling is either a strided convolution (``pooling_cls=None``) or a stride-1
convolution followed by a pooling layer (``DiffStride``, ``FixedSpectralPooling``, ...). In a
projecting residual layer one pooling instance is shared by the main branch and the shortcut,
so that both are downsampled by the same learned strides.

The classes and functions are Gin-configurable under the reference's names
(``resnet.Resnet.pooling_cls``, ``resnet.resnet18.strides``, ...).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import gin
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualLayer", "ResnetBlock", "Resnet", "resnet18", "resnet56", "parse_strides", "l2_param_groups"]

Number = Union[int, float]
Stride = Union[Number, Tuple[Number, Number]]


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


def _pair(stride: Stride, name: str = "stride") -> Tuple[Number, Number]:
    values = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
    if len(values) != 2:
        raise ValueError(f"{name} must be a number or a pair (S_h, S_w), but got {stride!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1:
            raise ValueError(f"{name} must be finite numbers >= 1, but got {stride!r}")
    return values


def _conv_stride(stride: Stride) -> Tuple[int, int]:
    """Integer strides for a strided convolution (no pooling class)."""
    values = _pair(stride)
    if any(float(v) != int(v) for v in values):
        raise ValueError(
            f"strided convolutions (pooling_cls=None) need whole-number strides, but got {stride!r}; "
            "use a pooling class such as DiffStride for fractional strides")
    return int(values[0]), int(values[1])


class Conv2dSame(nn.Conv2d):
    """``Conv2d`` with TensorFlow's 'same' padding: the extra row/column goes at the bottom/right.

    For stride 1 and odd kernels this is ordinary symmetric padding; for stride 2 on an even
    size, TensorFlow pads (0, 1) where PyTorch's ``padding=1`` would pad (1, 1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride)


def _he_normal_(weight: torch.Tensor) -> None:
    """Keras 'he_normal': a normal truncated at 2 sigma, sigma scaled so that the std is sqrt(2 / fan_in)."""
    fan_in = weight[0].numel() if weight.dim() > 2 else weight.shape[1]
    sigma = math.sqrt(2.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at ±2
    nn.init.trunc_normal_(weight, std=sigma, a=-2 * sigma, b=2 * sigma)


def conv2d(in_channels: int, filters: int, kernel_size: int, stride=(1, 1), padding: str = "same") -> nn.Conv2d:
    """A bias-free convolution with He-normal init, as the reference's ``conv2d``."""
    cls = Conv2dSame if padding == "same" else nn.Conv2d
    conv = cls(in_channels, filters, kernel_size, stride=stride, bias=False)
    _he_normal_(conv.weight)
    return conv


@gin.configurable
def batch_norm(num_features: int, momentum: float = 0.9, epsilon: float = 1e-5) -> nn.BatchNorm2d:
    """BatchNorm with Keras' arguments: Keras ``momentum`` m is PyTorch's ``1 - m``."""
    return nn.BatchNorm2d(num_features, eps=epsilon, momentum=1.0 - momentum)


@gin.configurable
class ResidualLayer(nn.Module):
    """A pre-activation residual layer: identity (``project=False``) or projecting.

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
        strides: Stride = (1, 1),
        pooling_cls: Optional[Callable[..., nn.Module]] = None,
        project: bool = False,
        channels_first: bool = True,
        weight_decay: float = 5e-3,
    ) -> None:
        super().__init__()
        if not project and in_filters != filters:
            raise ValueError(f"an identity residual layer needs in_filters == filters, but got {in_filters} and {filters}")
        pooling_cls = pooling_cls if project else None
        strides = _pair(strides, "strides") if project else (1, 1)
        self.weight_decay = weight_decay
        if pooling_cls is not None:
            conv_strides = (1, 1)
            self.pooling = pooling_cls(strides=strides)
        else:
            conv_strides = _conv_stride(strides)
            self.pooling = None
        self.strided_conv = conv2d(in_filters, filters, kernel_size, conv_strides)
        self.unstrided_conv = conv2d(filters, filters, kernel_size)
        self.bn1, self.bn2 = batch_norm(filters), batch_norm(filters)
        self.shortcut_conv = self.shortcut_bn = None
        if project:
            self.shortcut_conv = conv2d(in_filters, filters, 1, conv_strides, padding="valid")
            self.shortcut_bn = batch_norm(filters)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pooling is None else self.pooling(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self._pool(self.strided_conv(x))))
        y = self.bn2(self.unstrided_conv(y))
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self._pool(self.shortcut_conv(x)))
        else:
            shortcut = x
        return F.relu(y + shortcut)


@gin.configurable
class ResnetBlock(nn.Sequential):
    """Residual layers sharing a number of filters; only the first may project (and downsample)."""

    def __init__(
        self,
        in_filters: int,
        filters: int = gin.REQUIRED,
        strides: Stride = gin.REQUIRED,
        num_layers: int = 2,
        project_first: bool = True,
        **kwargs,
    ) -> None:
        layers = []
        for i in range(num_layers):
            project = project_first and i == 0
            layers.append(ResidualLayer(in_filters if i == 0 else filters, filters, strides=strides, project=project, **kwargs))
        super().__init__(*layers)


@gin.configurable
class Resnet(nn.Module):
    """A generic pre-activation ResNet: stem, one block per (filters, stride), head.

    Args:
        filters: filters of the stem, then of each block.
        strides: stride of the stem, then of each block's first layer; numbers or (S_h, S_w)
            pairs, or a string like ``'1, 1, 3, 2, 3'``.
        num_output_classes: size of the dense output.
        output_activation: None (logits) or ``'softmax'`` (probabilities, as the reference's recipe).
        id_only: indices of blocks whose first layer does not project (resnet18: ``[0]``).
        channels_first: accepted for the reference's configs; inputs are always (N, C, H, W)
            (use ``model.to(memory_format=torch.channels_last)`` for that layout).
        pooling_cls: None for strided convolutions, or a pooling class called as
            ``pooling_cls(strides=...)``.
        weight_decay: the reference's Keras L2 factor on conv and dense kernels and the dense
            bias, applied by the optimizer groups of :func:`l2_param_groups` (gradient ``2·wd·w``).
        in_channels: input channels (3 for CIFAR, 1 for MNIST).

    Shape:
        (N, in_channels, H, W) → (N, num_output_classes)
    """

    def __init__(
        self,
        filters: Sequence[int],
        strides: Union[str, Sequence[Stride]],
        num_output_classes: int = gin.REQUIRED,
        output_activation: Optional[str] = None,
        id_only: Sequence[int] = (),
        channels_first: bool = True,
        pooling_cls: Optional[Callable[..., nn.Module]] = None,
        weight_decay: float = 5e-3,
        in_channels: int = 3,
        **kwargs,
    ) -> None:
        super().__init__()
        strides = parse_strides(strides)
        filters = list(filters)
        if len(filters) != len(strides):
            raise ValueError(f"the number of filters ({len(filters)}) must match the number of strides ({len(strides)}): "
                             f"filters={filters}, strides={strides}")
        for i, s in enumerate(strides):
            _pair(s, f"strides[{i}]")
        if output_activation not in (None, "softmax", "linear"):
            raise ValueError(f"output_activation must be None or 'softmax', but got {output_activation!r}")
        self.output_activation = output_activation
        self.weight_decay = weight_decay
        self.strides = strides
        if pooling_cls is None:
            self.stem_conv = nn.Conv2d(in_channels, filters[0], 3, stride=_conv_stride(strides[0]), padding=1, bias=False)
            self.stem_pooling = None
        else:
            self.stem_conv = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
            self.stem_pooling = pooling_cls(strides=_pair(strides[0]))
        _he_normal_(self.stem_conv.weight)
        self.stem_bn = batch_norm(filters[0])
        blocks = []
        for i, (in_f, f, s) in enumerate(zip(filters[:-1], filters[1:], strides[1:])):
            blocks.append(ResnetBlock(in_f, filters=f, strides=s, project_first=i not in id_only,
                                      pooling_cls=pooling_cls, weight_decay=weight_decay, **kwargs))
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(filters[-1], num_output_classes)
        _he_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Resnet expects an (N, C, H, W) input, but got shape {tuple(x.shape)}")
        x = self.stem_conv(x)
        if self.stem_pooling is not None:
            x = self.stem_pooling(x)
        x = F.relu(self.stem_bn(x))
        x = self.blocks(x)
        logits = self.fc(x.mean(dim=(2, 3)))
        return logits.softmax(dim=-1) if self.output_activation == "softmax" else logits


@gin.configurable
def resnet18(strides: Optional[Union[str, Sequence[Stride]]] = None, **kwargs) -> Resnet:
    """ResNet-18 of the reference: filters [64, 64, 128, 256, 512], strides [1, 1, 2, 2, 2], 2 layers a block."""
    strides = [1, 1, 2, 2, 2] if strides is None else strides
    return Resnet([64, 64, 128, 256, 512], strides, id_only=[0], num_layers=2, kernel_size=3, **kwargs)


@gin.configurable
def resnet56(strides: Optional[Union[str, Sequence[Stride]]] = None, **kwargs) -> Resnet:
    """ResNet-56 of the reference: filters [16, 16, 32, 64], strides [1, 1, 2, 2], 9 layers a block."""
    strides = [1, 1, 2, 2] if strides is None else strides
    return Resnet([16, 16, 32, 64], strides, num_layers=9, kernel_size=3, **kwargs)


def l2_param_groups(model: nn.Module, weight_decay: Optional[float] = None) -> List[dict]:
    """Optimizer groups reproducing the reference's Keras L2 regulariser.

    Keras adds ``wd · Σ w²`` to the loss for conv kernels, dense kernels and the dense bias,
    i.e. a gradient ``2·wd·w``: the same as SGD's ``weight_decay = 2·wd`` on exactly those
    parameters. BatchNorm parameters and DiffStride strides are not decayed.
    """
    from diffstride.pooling import param_groups

    wd = getattr(model, "weight_decay", 0.0) if weight_decay is None else weight_decay
    decayed = lambda module, name, p: isinstance(module, (nn.Conv2d, nn.Linear))  # noqa: E731
    return param_groups(model, 2.0 * wd, decay=decayed)
