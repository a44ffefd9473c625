"""Converting existing models to learnable strides, and freezing learned strides for deployment."""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from torch import nn

from diffstride import pooling

__all__ = ["convert", "freeze", "Change"]

_KINDS = {"conv": nn.Conv2d, "avgpool": nn.AvgPool2d, "maxpool": nn.MaxPool2d}


@dataclasses.dataclass
class Change:
    """One downsampling layer that :func:`convert` replaced."""

    name: str
    kind: str
    strides: Tuple[int, int]
    pooling: str  # name of the pooling instance (shared ones have one name)
    shared_with: Optional[str] = None

    def __str__(self) -> str:
        text = f"{self.name}: {self.kind} stride {self.strides} -> stride 1 + {self.pooling}"
        return text + (f" (shared with {self.shared_with})" if self.shared_with else "")


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _strides_of(module: nn.Module) -> Tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return _pair(module.stride)
    stride = module.stride if module.stride is not None else module.kernel_size
    return _pair(stride)


def _is_downsampling(module: nn.Module, kinds: Tuple[type, ...]) -> bool:
    return isinstance(module, kinds) and _strides_of(module) != (1, 1)


def _set_stride_one(module: nn.Module) -> None:
    module.stride = (1, 1)


def _downsample_pairs(model: nn.Module, kinds: Tuple[type, ...]) -> Dict[str, str]:
    """Shortcut convolution -> main-branch layer of the same residual block (torchvision's
    ``downsample`` convention: a block with a strided layer and a ``downsample`` whose first
    module is a strided conv with the same strides)."""
    pairs = {}
    for block_name, block in model.named_modules():
        downsample = getattr(block, "downsample", None)
        if not isinstance(downsample, nn.Sequential) or not len(downsample):
            continue
        shortcut = downsample[0]
        if not _is_downsampling(shortcut, kinds):
            continue
        prefix = f"{block_name}." if block_name else ""
        for name, module in block.named_modules():
            if name.startswith("downsample") or not name:
                continue
            if _is_downsampling(module, kinds) and _strides_of(module) == _strides_of(shortcut):
                pairs[f"{prefix}downsample.0"] = f"{prefix}{name}"
                break
    return pairs


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert(
    model: nn.Module,
    pooling_cls: Callable[..., nn.Module] = pooling.DiffStride,
    layers: Iterable[str] = ("conv", "avgpool", "maxpool"),
    share_residual: bool = True,
    inplace: bool = False,
    **pooling_kwargs,
) -> Tuple[nn.Module, List[Change]]:
    """Replaces the strided downsampling of ``model`` by stride-1 layers followed by ``pooling_cls``.

    Every ``nn.Conv2d`` / ``nn.AvgPool2d`` / ``nn.MaxPool2d`` (as chosen by ``layers``) with a
    stride other than 1 keeps its weights, kernel and padding, gets stride 1, and is followed by
    ``pooling_cls(strides=<its stride>, **pooling_kwargs)``. In a residual block with a
    ``downsample`` shortcut (torchvision's ResNets), the main branch's strided layer and the
    shortcut's strided convolution share one pooling instance, as in the reference's ResNets.

    Args:
        model: any PyTorch model (copied unless ``inplace``).
        pooling_cls: e.g. :class:`~diffstride.pooling.DiffStride` or ``FixedSpectralPooling``.
        layers: which strided layers to convert: any of 'conv', 'avgpool', 'maxpool'.
        share_residual: share one pooling instance between a block's main branch and shortcut.

    Returns:
        ``(model, changes)``: the converted model and one :class:`Change` per replaced layer.

    Example:
        >>> import torchvision
        >>> model, changes = convert(torchvision.models.resnet18(weights=None))
        >>> print(*changes[:2], sep="\\n")
        conv1: conv stride (2, 2) -> stride 1 + conv1.1
        maxpool: maxpool stride (2, 2) -> stride 1 + maxpool.1
    """
    layers = tuple(layers)
    unknown = [k for k in layers if k not in _KINDS]
    if unknown:
        raise ValueError(f"layers must be among {sorted(_KINDS)}, but got {unknown}")
    kinds = tuple(_KINDS[k] for k in layers)
    model = model if inplace else copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules() if _is_downsampling(m, kinds)]
    pairs = _downsample_pairs(model, kinds) if share_residual else {}
    main_of_shortcut = pairs
    instances: Dict[str, nn.Module] = {}
    changes: List[Change] = []
    for name, module in targets:
        strides = _strides_of(module)
        kind = next(k for k in layers if isinstance(module, _KINDS[k]))
        partner = main_of_shortcut.get(name)
        if partner is not None and partner in instances:
            pool = instances[partner]
            shared = partner
        else:
            pool = pooling_cls(strides=strides, **pooling_kwargs)
            shared = None
        instances[name] = pool
        _set_stride_one(module)
        _set_submodule(model, name, nn.Sequential(module, pool))
        changes.append(Change(name, kind, strides, f"{shared or name}.1", shared))
    # the shortcut may come before its partner in module order: share in a second pass
    for shortcut, main in pairs.items():
        if shortcut in instances and main in instances and instances[shortcut] is not instances[main]:
            instances[shortcut] = instances[main]
            model.get_submodule(shortcut)[1] = instances[main]
            for change in changes:
                if change.name == shortcut:
                    change.shared_with, change.pooling = main, f"{main}.1"
    return model, changes


def freeze(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Turns every DiffStride's learned strides into fixed values, for deployment.

    The ``strides`` parameter becomes a buffer (so the model has no stride parameters and an
    optimizer ignores it), the layer plans its output size from Python values (static shapes:
    ``torch.compile(fullgraph=True)`` and ONNX export work) and gives the same outputs.
    """
    model = model if inplace else copy.deepcopy(model)
    for _, layer in pooling.pooling_layers(model):
        if isinstance(layer, pooling._DiffStrideNd) and isinstance(layer.strides, nn.Parameter):
            values = layer.strides.detach().clone()
            del layer._parameters["strides"]
            layer.register_buffer("strides", values)
            layer._sync_frozen_values()
    return model
