"""DiffStride in timm's own anti-aliasing slot (``aa_layer``).

timm's ResNets (and the families built on its ``create_aa``) put an anti-aliasing layer after a
stride-1 convolution wherever a block downsamples: exactly DiffStride's slot. :func:`aa_layer`
gives a class for that slot::

    import timm, diffstride.timm
    model = timm.create_model("resnet50", aa_layer=diffstride.timm.aa_layer())

Such a network has DiffStride where timm puts its blur, but its shortcuts (``downsample``) still
subsample by a fixed 2: once the learned strides move, the two branches of a block no longer
meet. :func:`create_model` therefore also converts the shortcuts, tying each to its block's
pooling layer (:func:`diffstride.convert` reuses pooling layers already in a model); use it, or
call ``diffstride.convert(model)`` on the model above.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from diffstride import pooling
from diffstride.convert import convert

__all__ = ["aa_layer", "create_model"]


def aa_layer(pooling_cls: Callable[..., nn.Module] = pooling.DiffStride, **pooling_kwargs: Any) -> type:
    """A subclass of ``pooling_cls`` (2-D) built as timm builds anti-aliasing layers:
    ``cls(channels=..., stride=2, device=..., dtype=...)``; ``pooling_kwargs`` (e.g.
    ``smoothness_factor=4.0``) go to every instance."""
    if not (isinstance(pooling_cls, type) and issubclass(pooling_cls, pooling.PoolingLayer)):
        raise TypeError(f"pooling_cls must be a pooling class of diffstride.pooling (e.g. pooling.DiffStride), "
                        f"but got {pooling_cls!r}")
    takes_device = pooling_cls is pooling.DiffStride or issubclass(pooling_cls, pooling.DiffStride)

    def __init__(self, channels: Optional[int] = None, stride: Any = 2, device=None, dtype=None, **kwargs):
        strides: Tuple[int, ...] = (stride, stride) if isinstance(stride, int) else tuple(stride)
        extra = dict(pooling_kwargs, **kwargs)
        if takes_device:
            extra.update({k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        pooling_cls.__init__(self, strides=strides, **extra)

    return type(f"{pooling_cls.__name__}AA", (pooling_cls,), {"__init__": __init__, "__module__": __name__})


def create_model(name: str, pooling_cls: Callable[..., nn.Module] = pooling.DiffStride,
                 example_input: Optional[torch.Tensor] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, aa_layer=aa_layer(pooling_cls), **kwargs)``, then the remaining
    strided layers (the stem, the shortcuts) converted, each shortcut sharing its block's pooling
    layer; proved against moving strides as :func:`diffstride.convert` proves. Pooling options
    go in ``pooling_kwargs={...}``."""
    import timm  # the optional timm: imported by the function that needs it

    pooling_kwargs = kwargs.pop("pooling_kwargs", {})
    model = timm.create_model(name, aa_layer=aa_layer(pooling_cls, **pooling_kwargs), **kwargs)
    model, _ = convert(model, pooling_cls, example_input=example_input, inplace=True, **pooling_kwargs)
    return model
