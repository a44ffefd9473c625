"""DiffStride: downsampling with learnable strides (Riad et al., ICLR 2022) for PyTorch."""
from diffstride import functional, metrics
from diffstride.complexity import complexity_loss, count_flops
from diffstride.convert import convert, freeze
from diffstride.pooling import (
    DiffStride,
    DiffStride1d,
    DiffStride2d,
    DiffStride3d,
    FixedSpectralPooling,
    FixedSpectralPooling1d,
    FixedSpectralPooling2d,
    FixedSpectralPooling3d,
    PoolingLayer,
    SpatialPooling,
    SpatialPooling1d,
    SpatialPooling2d,
    SpatialPooling3d,
    param_groups,
    pooling_layers,
)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "metrics",
    "complexity_loss",
    "count_flops",
    "convert",
    "freeze",
    "DiffStride",
    "DiffStride1d",
    "DiffStride2d",
    "DiffStride3d",
    "FixedSpectralPooling",
    "FixedSpectralPooling1d",
    "FixedSpectralPooling2d",
    "FixedSpectralPooling3d",
    "PoolingLayer",
    "SpatialPooling",
    "SpatialPooling1d",
    "SpatialPooling2d",
    "SpatialPooling3d",
    "param_groups",
    "pooling_layers",
]


def __getattr__(name: str):
    """``diffstride.timm`` (timm's anti-aliasing slot) is imported on first use: timm is optional."""
    if name == "timm":
        import importlib

        return importlib.import_module("diffstride.timm")
    raise AttributeError(f"module 'diffstride' has no attribute {name!r}")
