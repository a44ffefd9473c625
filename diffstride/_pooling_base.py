"""What every pooling layer shares: :class:`PoolingLayer` (its surface: strides, output sizes,
freezing) and the checks and layout conversions of its arguments and inputs.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from torch import nn

from diffstride import _validation as check


Strides = Union[float, Sequence[float]]


def check_strides(strides: Strides, ndim: int) -> Tuple[float, ...]:
    """``ndim`` finite strides >= 1 as floats; a single number is used for every axis."""
    return tuple(float(v) for v in check.per_axis(strides, ndim))


def to_channels_first(x: torch.Tensor, ndim: int, data_format: str, layer: str) -> torch.Tensor:
    """Checks the input (rank in the layer's layout, dtype) and returns a channels-first *view*."""
    check.spatial_input(x, ndim, layer, data_format)
    return x.movedim(-1, 1) if data_format == "channels_last" else x


def from_channels_first(y: torch.Tensor, data_format: str) -> torch.Tensor:
    return y.movedim(1, -1) if data_format == "channels_last" else y


class PoolingLayer(nn.Module):
    """What every pooling layer of this package offers, whatever its dimensionality or kind.

    Callers (``complexity``, ``convert``, the training reports) use these instead of branching on
    the type of ``.strides`` (a Parameter, a buffer after freezing, or a tuple).
    """

    _ndim: int

    @property
    def ndim(self) -> int:
        """Number of spatial axes: 1, 2 or 3."""
        return self._ndim

    @property
    def trainable(self) -> bool:
        """Whether the strides are learned (only DiffStride's, until frozen)."""
        return False

    def stride_values(self) -> Tuple[float, ...]:
        """The strides as Python floats, one per spatial axis."""
        return tuple(float(v) for v in self.strides)

    def stride_product(self) -> torch.Tensor:
        """The product of the strides over the spatial axes (the factor by which the layer divides
        the number of positions); differentiable for DiffStride."""
        return torch.tensor(math.prod(self.stride_values()))

    def freeze_(self) -> "PoolingLayer":
        """Fixes the strides in place (DiffStride: the parameter becomes a buffer); returns self."""
        return self

    def output_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        raise NotImplementedError
