"""The reference's two baselines, at fixed strides: spectral pooling (:class:`FixedSpectralPooling`)
and plain subsampling (:class:`SpatialPooling`), 1-D, 2-D and 3-D. Public through
:mod:`diffstride.pooling`.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from diffstride import functional as F
from diffstride import _validation as check
from diffstride._plans import memory_format_of, spatial_size
from diffstride._pooling_base import PoolingLayer, Strides, check_strides, from_channels_first, to_channels_first


class _FixedSpectralPoolingNd(PoolingLayer):
    """Spectral pooling with fixed strides in any dimensionality; a subclass only sets ``_ndim``."""

    def __init__(self, strides: Strides = 2.0, data_format: str = "channels_first", algorithm: str = "auto") -> None:
        super().__init__()
        self.strides = check_strides(strides, self._ndim)
        self.data_format = check.data_format(data_format)
        self.algorithm = check.algorithm(algorithm, self._ndim)

    def output_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """Spatial output size for a spatial ``input_size`` (the layer is not run)."""
        size = check.spatial_size(input_size, self._ndim)
        check.fixed_size(size, type(self).__name__)
        return self._plan(size).out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_first(x, self._ndim, self.data_format, type(self).__name__)
        check.fixed_size(spatial_size(x), type(self).__name__)
        return from_channels_first(self._pool(x), self.data_format)

    def _plan(self, size: Tuple[int, ...]) -> F.SpectralPlan:
        return F.fixed_spectral_plan(size, self.strides)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.fixed_spectral_pool_unchecked(x, self._plan(spatial_size(x)), self.algorithm)

    def extra_repr(self) -> str:
        text = f"strides={tuple(float(s) for s in self.strides)}"
        text += f", data_format={self.data_format!r}" if self.data_format != "channels_first" else ""
        return text + (f", algorithm={self.algorithm!r}" if self.algorithm != "auto" else "")


class FixedSpectralPooling(_FixedSpectralPoolingNd):
    """Spectral pooling with fixed strides (Rippel et al., 2015), as the reference's baseline.

    Keeps the ``h = floor(H/S_h)`` (rounded down to even) lowest frequency rows and the
    ``floor(W/S_w) // 2 + 1`` lowest rfft columns and inverts to ``(h, floor(W/S_w))``.

    Shape:
        - Input: (N, C, H, W) (or (N, H, W, C)), H, W >= 2.
        - Output: (N, C, h, w).

    Examples:
        >>> FixedSpectralPooling(strides=(1.5, 3.3))(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 20, 9])
    """

    _ndim = 2


class FixedSpectralPooling1d(_FixedSpectralPoolingNd):
    """1-D spectral pooling with a fixed stride: keeps rfft bins ``[0, l//2 + 1)``, ``l = floor(L/S)``.

    Examples:
        >>> FixedSpectralPooling1d(strides=4)(torch.rand(2, 8, 1000)).shape
        torch.Size([2, 8, 250])
    """

    _ndim = 1


class FixedSpectralPooling3d(_FixedSpectralPoolingNd):
    """3-D spectral pooling with fixed strides (S_d, S_h, S_w) on (N, C, D, H, W): depth and
    height as the 2-D height (rounded down to even), width as the 2-D width.

    Examples:
        >>> FixedSpectralPooling3d(strides=2)(torch.rand(1, 2, 8, 16, 16)).shape
        torch.Size([1, 2, 4, 8, 8])
    """

    _ndim = 3


class _SpatialPoolingNd(PoolingLayer):
    """Plain subsampling (pool size 1, 'same' padding) in any dimensionality: output
    ``ceil(size / stride)`` per axis; strides must be whole numbers."""

    def __init__(self, strides: Strides = 2, data_format: str = "channels_first") -> None:
        super().__init__()
        values = check_strides(strides, self._ndim)
        if any(v != int(v) for v in values):
            raise ValueError(f"{type(self).__name__} needs whole-number strides, but got {strides!r}")
        self.strides = tuple(int(v) for v in values)
        self.data_format = check.data_format(data_format)

    def output_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """Spatial output size ``ceil(size / stride)`` for a spatial ``input_size``."""
        size = check.spatial_size(input_size, self._ndim)
        return tuple(-(-n // s) for n, s in zip(size, self.strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_first(x, self._ndim, self.data_format, type(self).__name__)
        index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.strides)
        # a tensor of its own, as nn.AvgPool2d returns: a view would let an in-place op after the
        # layer (nn.ReLU(inplace=True), y += z) write into the input, which a residual branch reads
        return from_channels_first(x[index].clone(memory_format=memory_format_of(x)), self.data_format)

    def extra_repr(self) -> str:
        text = f"strides={self.strides}"
        return text + (f", data_format={self.data_format!r}" if self.data_format != "channels_first" else "")


class SpatialPooling(_SpatialPoolingNd):
    """Plain subsampling: average pooling with pool size 1 and 'same' padding, as the reference's baseline.

    Output size ``ceil(size / stride)``; strides must be whole numbers.

    Examples:
        >>> SpatialPooling(strides=(3, 2))(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 11, 16])
    """

    _ndim = 2


class SpatialPooling1d(_SpatialPoolingNd):
    """1-D plain subsampling (pool size 1, 'same' padding): output length ``ceil(L / stride)``."""

    _ndim = 1


class SpatialPooling3d(_SpatialPoolingNd):
    """3-D plain subsampling (pool size 1, 'same' padding): output ``ceil(size / stride)`` per axis."""

    _ndim = 3


FixedSpectralPooling2d = FixedSpectralPooling


SpatialPooling2d = SpatialPooling
