"""Converting existing models to learnable strides, and freezing learned strides for deployment.

:func:`convert` replaces strided convolutions and poolings (1-D, 2-D, 3-D) by stride-1 layers
followed by a pooling layer. Layers whose outputs meet (added, concatenated, multiplied, ...) with
no other downsampling in between share one pooling instance, found by tracing the data flow with
``torch.fx``; then the result is proved: every pooling layer's output size is moved on its own (as
training moves strides) and the network must still run, on the ``meta`` device (shapes only, no
arithmetic). A hazard left raises :class:`ConversionError` at conversion time, naming the layers,
never in the middle of a training run.
"""
from __future__ import annotations

import collections
import copy
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from diffstride import pooling
from diffstride._convert_layers import (KINDS, Change, ConversionError, ResizeLike, family_of, is_downsampling, kind_of,
                                        ndim_of, pooling_strides, same_padding, set_submodule, strides_of)
from diffstride._convert_proof import default_example, prove
from diffstride._convert_rewrites import blocks_to_rewrite, modules_for_functional_pools, sizes_follow_meetings
from diffstride._convert_ties import UnionFind, ties_by_data_flow, ties_by_structure

__all__ = ["convert", "freeze", "Change", "ConversionError", "ResizeLike", "set_submodule"]


def convert(
    model: nn.Module,
    pooling_cls: Callable[..., nn.Module] = pooling.DiffStride,
    layers: Iterable[str] = ("conv", "avgpool", "maxpool", "blur"),
    share_residual: bool = True,
    inplace: bool = False,
    exclude: Iterable[str] = (),
    example_input: Optional[torch.Tensor] = None,
    check: bool = True,
    **pooling_kwargs,
) -> Tuple[nn.Module, List[Change]]:
    """Replaces the strided downsampling of ``model`` by stride-1 layers followed by ``pooling_cls``.

    Every ``nn.Conv{1,2,3}d`` / ``nn.AvgPool{1,2,3}d`` / ``nn.MaxPool{1,2,3}d`` (as chosen by
    ``layers``) with a stride other than 1 keeps its weights, kernel and padding, gets stride 1,
    and is followed by a pooling layer of its dimensionality with its strides:
    ``pooling_cls(strides=..., **pooling_kwargs)``, where a DiffStride, FixedSpectralPooling or
    SpatialPooling class of any dimensionality stands for its family (``DiffStride`` gives
    ``DiffStride1d`` after a ``Conv1d``).

    Layers whose outputs meet (added, subtracted, multiplied, concatenated, stacked, ...) with no
    other downsampling in between share one pooling instance, as the branches of the reference's
    ResNet blocks do: the data flow is traced with ``torch.fx``. A model that cannot be traced
    falls back to the ``downsample``-shortcut rule of torchvision's ResNets, with a warning naming
    the layers not checked by data flow. A shared layer that would shrink its input at stride 1
    (e.g. a kernel-2 stride-2 average pooling on a shortcut) gets padding at the end of each axis
    (``NAME.pad``: zeros before a convolution, replicated edges before a pooling), so that all
    branches reach the shared pooling layer at the same size. This is also the rule for branches
    that meet after 'valid' strided layers (Inception's blocks): in the original they met at equal
    sizes, so each keeps its input size at stride 1 and one shared pooling sizes them all alike.

    The rest of what a network may do around its strides:

    - Strides per axis may differ ((1, 2, 2) video stems, (2, 1, 1) temporal convolutions). A
      shortcut that downsamples by the product of a chain of the other branch's layers (R(2+1)D:
      (2, 2, 2) against (1, 2, 2) then (2, 1, 1)) goes through that chain's pooling instances, in
      order.
    - A strided functional pooling in a block's ``forward`` (``F.max_pool2d(x, 3, stride=2)``)
      becomes a module of that block (``BLOCK.functional_pool0``; the block becomes a
      ``torch.fx.GraphModule`` with the same parameters and state_dict keys) and is converted.
    - An upsampling by a fixed ``scale_factor`` (``nn.Upsample``, ``F.interpolate``) whose output
      meets another tensor is rewritten as :class:`ResizeLike` that tensor, in the block (or, when
      the model is copied, the model) where they meet: multi-resolution nets (HRNet-style) keep
      their branches' sizes matched at any strides.
    - Blur-then-subsample layers (timm's ``BlurPool2d``; the ``'blur'`` kind) are replaced whole by
      the pooling layer, the stride-1 convolution before them kept; pooling layers already in the
      model (put in timm's ``aa_layer`` slot, see :mod:`diffstride.timm`) are reused by the layers
      whose outputs meet theirs.

    With ``check`` (default), the result is proved before it is returned: on the ``meta`` device
    (shapes only), the network must run on ``example_input`` at the initial strides, with each
    trainable pooling instance's output size moved on its own, and with all moved at random.
    Otherwise :class:`ConversionError` names the layers.

    Args:
        model: any PyTorch model (copied unless ``inplace``).
        pooling_cls: e.g. :class:`~diffstride.pooling.DiffStride` or ``FixedSpectralPooling``.
        layers: which strided layers to convert: any of 'conv', 'avgpool', 'maxpool', 'blur'.
        share_residual: share one pooling instance among layers whose outputs meet.
        inplace: modify ``model`` itself.
        exclude: names of layers to leave as they are (e.g. a ViT's patch embedding).
        example_input: an input the model accepts, for the proof; default zeros of shape
            ``(1, C, 224, 224)`` (``(1, C, 4096)`` for 1-D, ``(1, C, 16, 112, 112)`` for 3-D).
        check: prove the result (see above).

    Returns:
        ``(model, changes)``: the converted model and one :class:`Change` per replaced layer.

    Example:
        >>> import torchvision
        >>> model, changes = convert(torchvision.models.resnet18(weights=None))
        >>> print(*changes[:2], sep="\\n")
        conv1: conv stride (2, 2) -> stride 1 + conv1.1
        maxpool: maxpool stride (2, 2) -> stride 1 + maxpool.1
    """
    layers, exclude = _checked_arguments(model, layers, exclude)
    model, inplace = _rewrite_graphs(model, layers, exclude, inplace)
    targets = [name for name, m in model.named_modules() if is_downsampling(m, layers) and name not in exclude]
    if not targets:
        return (model if inplace else copy.deepcopy(model)), []
    # pooling layers already in the model (e.g. placed in timm's aa_layer slot): a converted layer
    # whose output meets theirs reuses them
    placed = {name: pooling_strides(m) for name, m in pooling.pooling_layers(model) if name not in exclude}
    placed = {name: s for name, s in placed.items() if s is not None}
    ties, chains = _tie(model, targets, placed, layers, share_residual)
    model = model if inplace else copy.deepcopy(model)
    changes = _replace(model, targets, placed, ties, chains, layers, pooling_cls, pooling_kwargs)
    if check:
        _prove_or_warn(model, changes, example_input)
    return model, changes


def _checked_arguments(model: nn.Module, layers: Iterable[str], exclude: Iterable[str]):
    layers = tuple(layers)
    unknown = [k for k in layers if k not in KINDS and k != "blur"]
    if unknown:
        raise ValueError(f"layers must be among {sorted(KINDS) + ['blur']}, but got {unknown}")
    exclude = set(exclude)
    missing = sorted(exclude - {name for name, _ in model.named_modules()})
    if missing:
        raise ValueError(f"exclude names layers that are not in the model: {missing}")
    return layers, exclude


def _rewrite_graphs(model: nn.Module, layers, exclude, inplace: bool) -> Tuple[nn.Module, bool]:
    """Functional poolings become modules, upsamplings that meet become :class:`ResizeLike`
    (:mod:`diffstride._convert_rewrites`); returns the model and whether it is ours to modify."""
    pool_blocks, meeting_blocks = blocks_to_rewrite(model, layers, exclude)
    if not (pool_blocks or meeting_blocks):
        return model, inplace
    caller_owns = inplace
    model = model if inplace else copy.deepcopy(model)  # the same block names in the copy
    modules_for_functional_pools(model, pool_blocks, layers)
    return sizes_follow_meetings(model, meeting_blocks, inplace_root=caller_owns), True


def _tie(model: nn.Module, targets: List[str], placed: Dict[str, Tuple[int, ...]], layers,
         share_residual: bool) -> Tuple[UnionFind, Dict[str, Tuple[str, ...]]]:
    """The groups of layers that share a pooling instance (:mod:`diffstride._convert_ties`), and
    the chains: a layer -> the chain of layers whose poolings it reuses (R(2+1)D's shortcut)."""
    ties = UnionFind(list(targets) + list(placed))
    chains: Dict[str, Tuple[str, ...]] = {}
    if not share_residual:
        return ties, chains
    try:
        strides = {n: strides_of(model.get_submodule(n)) for n in targets}
        ties_by_data_flow(model, list(targets) + list(placed), ties, {**strides, **placed}, chains)
    except Exception as err:  # torch.fx cannot trace data-dependent Python control flow
        warnings.warn(
            f"convert: {type(model).__name__} could not be traced with torch.fx "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); layers are shared by "
            f"the 'downsample' shortcut rule only, and these were not checked by data flow: {', '.join(targets)}. "
            f"The proof after conversion still runs (check=True).", stacklevel=3)
        ties_by_structure(model, layers, ties)
    return ties, chains


def _stride_one_then(module: nn.Module, pool: nn.Module, ndim: int, padded: bool) -> nn.Sequential:
    """``module`` at stride 1 followed by ``pool`` (padded at the end of each axis when it is
    shared and would shrink its input: :func:`~diffstride._convert_layers.same_padding`)."""
    module.stride = (1,) * ndim
    pad = same_padding(module, ndim) if padded else None
    parts = [("0", module), ("1", pool)] if pad is None else [("pad", pad), ("0", module), ("1", pool)]
    return nn.Sequential(collections.OrderedDict(parts))


def _replace(model: nn.Module, targets: List[str], placed: Dict[str, Tuple[int, ...]], ties: UnionFind,
             chains: Dict[str, Tuple[str, ...]], layers, pooling_cls, pooling_kwargs) -> List[Change]:
    """Replaces every target in ``model``: one pooling instance per group, registered after the
    group's first layer (or the pooling layer already in the model); returns the changes."""
    family = family_of(pooling_cls)
    groups: Dict[str, List[str]] = {}
    for name in targets:
        groups.setdefault(ties.find(name), []).append(name)
    instances: Dict[str, Tuple[nn.Module, Tuple[int, ...]]] = {}  # first layer of a group -> (pooling, its strides)
    for name, strides in placed.items():  # a group with a pooling layer already in the model uses it
        group = groups.setdefault(ties.find(name), [])
        if not group or group[0] not in placed:
            group.insert(0, name)
            instances[name] = (model.get_submodule(name), strides)
    changes: List[Change] = []
    location: Dict[str, str] = {}  # where each group's instance is registered
    for name in [t for t in targets if t not in chains] + [t for t in targets if t in chains]:
        module = model.get_submodule(name)
        strides, ndim = strides_of(module), ndim_of(module)
        if name in chains:  # R(2+1)D's shortcut: the pooling instances of the chain it stands for, in order
            firsts = [groups[ties.find(c)][0] for c in chains[name]]
            pool = nn.Sequential(*[instances[f][0] for f in firsts])
            set_submodule(model, name, _stride_one_then(module, pool, ndim, padded=True))
            changes.append(Change(name, kind_of(module, layers), strides, " then ".join(f"{f}.1" for f in firsts),
                                  " + ".join(chains[name])))
            continue
        group = groups[ties.find(name)]
        first = group[0]  # converted first: its pooling is registered as FIRST.1
        if first in instances:
            pool, first_strides = instances[first]
            if first_strides != strides:
                raise ConversionError(
                    f"{first} (stride {first_strides}) and {name} (stride {strides}) feed the same operation but "
                    f"downsample by different factors, so they cannot share a pooling layer; leave one out with "
                    f"exclude=[...]")
        else:
            pool = (family[ndim] if family is not None else pooling_cls)(strides=strides, **pooling_kwargs)
            instances[first] = (pool, strides)
        kind = kind_of(module, layers)
        location.setdefault(first, first if first in placed or kind == "blur" else f"{first}.1")
        # a blur layer is replaced whole (the blur and its subsampling)
        set_submodule(model, name, pool if kind == "blur" else _stride_one_then(module, pool, ndim, len(group) > 1))
        changes.append(Change(name, kind, strides, location[first], first if name != first else None))
    return changes


def _prove_or_warn(model: nn.Module, changes: List[Change], example_input: Optional[torch.Tensor]) -> None:
    """The proof (:mod:`diffstride._convert_proof`) on ``example_input`` or a default one."""
    if example_input is None:
        example_input = default_example(model, max(len(c.strides) for c in changes))
    if example_input is None:
        warnings.warn("convert: no example_input and no convolution to infer its channels from; "
                      "the result was not proved (pass example_input=...)", stacklevel=3)
    else:
        prove(model, changes, example_input)


def freeze(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Turns every DiffStride's learned strides into fixed values, for deployment.

    The ``strides`` parameter becomes a buffer (so the model has no stride parameters and an
    optimizer ignores it), the layer plans its output size from Python values (static shapes:
    ``torch.compile(fullgraph=True)`` and ONNX export work) and gives the same outputs.
    """
    model = model if inplace else copy.deepcopy(model)
    for _, layer in pooling.pooling_layers(model):
        layer.freeze_()
    return model
