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
import operator
import dataclasses
import random
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from diffstride import pooling
from diffstride._validation import per_axis

__all__ = ["convert", "freeze", "Change", "ConversionError"]

_KINDS: Dict[str, Tuple[type, ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "avgpool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
    "maxpool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
}
_NDIM = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
         nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
# each family by dimensionality: a 2-D class given as pooling_cls serves 1-D and 3-D layers too
_FAMILIES = [
    {1: pooling.DiffStride1d, 2: pooling.DiffStride, 3: pooling.DiffStride3d},
    {1: pooling.FixedSpectralPooling1d, 2: pooling.FixedSpectralPooling, 3: pooling.FixedSpectralPooling3d},
    {1: pooling.SpatialPooling1d, 2: pooling.SpatialPooling, 3: pooling.SpatialPooling3d},
]
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ADAPTIVE_FUNCTIONS = {torch.nn.functional.adaptive_avg_pool1d, torch.nn.functional.adaptive_avg_pool2d,
                       torch.nn.functional.adaptive_avg_pool3d, torch.nn.functional.adaptive_max_pool1d,
                       torch.nn.functional.adaptive_max_pool2d, torch.nn.functional.adaptive_max_pool3d}
_DEFAULT_SIZES = {1: (4096,), 2: (224, 224), 3: (16, 112, 112)}
# functional poolings that a block's forward may call with a stride: (kind, module class, argument names)
_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_FUNCTIONAL_POOLS = {
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


def _strides_of(module: nn.Module) -> Tuple[int, ...]:
    stride = module.stride if module.stride is not None else module.kernel_size  # pools: None means kernel
    return tuple(int(v) for v in per_axis(stride, _ndim_of(module), "stride"))


# blur-then-subsample layers (timm's BlurPool2d, antialiased-cnns' BlurPool, kornia's BlurPool2D):
# the anti-aliasing slot itself, replaced whole by the pooling layer (a learnable low-pass)
_BLUR_NAMES = {"BlurPool2d": 2, "BlurPool2D": 2, "BlurPool": 2, "BlurPool1d": 1, "BlurPool1D": 1}


def _is_blur(module: nn.Module) -> bool:
    return type(module).__name__ in _BLUR_NAMES and hasattr(module, "stride")


def _ndim_of(module: nn.Module) -> int:
    if _is_blur(module):
        return _BLUR_NAMES[type(module).__name__]
    for cls, n in _NDIM.items():
        if isinstance(module, cls):
            return n
    raise TypeError(f"not a convertible layer: {type(module).__name__}")


def _kind_of(module: nn.Module, layers: Sequence[str]) -> Optional[str]:
    if _is_blur(module):
        return "blur" if "blur" in layers else None
    return next((k for k in layers if k in _KINDS and isinstance(module, _KINDS[k])), None)


def _pooling_strides(layer: nn.Module) -> Optional[Tuple[int, ...]]:
    """A pooling layer's current strides as integers, or None when one is not an integer."""
    values = layer.strides.tolist() if torch.is_tensor(layer.strides) else list(layer.strides)
    return tuple(int(v) for v in values) if all(float(v).is_integer() for v in values) else None


def _is_downsampling(module: nn.Module, layers: Sequence[str]) -> bool:
    return _kind_of(module, layers) is not None and any(s != 1 for s in _strides_of(module))


def _same_padding(module: nn.Module, ndim: int) -> Optional[nn.Module]:
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
    if isinstance(module, _KINDS["conv"]):
        return (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)[ndim - 1](pad, 0.0)
    return (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)[ndim - 1](pad)  # max/avg unchanged


def _family(pooling_cls: Callable) -> Optional[Dict[int, type]]:
    return next((family for family in _FAMILIES if pooling_cls in family.values()), None)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ----------------------------------------------------------------------------------------------
# Which layers must share a pooling instance


class _UnionFind:
    def __init__(self, items: Iterable[str]):
        self.parent = {item: item for item in items}

    def find(self, item: str) -> str:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


class _LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, with every layer to convert kept as one call (subclasses of
    ``nn.Conv3d`` and the like, e.g. torchvision's ``Conv3DSimple``, would be traced through)."""

    def __init__(self, leaves: Iterable[str]):
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (qualified_name in self.leaves or isinstance(module, (ResizeLike, pooling.PoolingLayer))
                or super().is_leaf_module(module, qualified_name))


def _ties_by_data_flow(model: nn.Module, targets: Sequence[str], uf: _UnionFind,
                       strides: Optional[Dict[str, Tuple[int, ...]]] = None,
                       chains: Optional[Dict[str, Tuple[str, ...]]] = None) -> None:
    """Traces ``model`` with torch.fx and unites the targets whose outputs meet.

    Every value carries its *history*: the targets it went through, in order. An operation with
    several spatial inputs (add, cat, mul, ...) unites their histories position by position from
    the newest: tensors that meet were downsampled by the same layers, which must then move
    together. Adaptive poolings give a size-free value (empty history).

    One exception, the factorised convolutions of R(2+1)D: where, after their common past, one
    branch went through a single layer and the other through a chain of layers whose strides
    multiply, axis by axis, to that layer's (a (2, 2, 2) shortcut against (1, 2, 2) then
    (2, 1, 1)), the single layer is recorded in ``chains`` to be followed by the chain's own
    pooling instances, in order: both branches then downsample alike at any strides.
    """
    target_set = set(targets)
    graph = _LeafTracer(target_set).trace(model)
    modules = dict(model.named_modules())
    history: Dict[torch.fx.Node, Tuple[str, ...]] = {}

    def product(names: Sequence[str]) -> Tuple[int, ...]:
        out = [1] * len(strides[names[0]])
        for name in names:
            out = [a * b for a, b in zip(out, strides[name])]
        return tuple(out)

    def chained(first: Tuple[str, ...], other: Tuple[str, ...]) -> bool:
        common = 0
        while common < min(len(first), len(other)) and first[common] == other[common]:
            common += 1
        single, chain = first[common:], other[common:]
        if len(single) != 1 or len(chain) < 2 or strides is None or chains is None:
            return False
        if any(len(strides[n]) != len(strides[single[0]]) for n in chain) or product(chain) != strides[single[0]]:
            return False
        chains[single[0]] = tuple(chain)
        return True

    for node in graph.nodes:
        inputs = [history[a] for a in node.all_input_nodes if a in history]
        if node.op == "call_module" and node.target in target_set:
            history[node] = (inputs[0] if inputs else ()) + (node.target,)
        elif node.op == "call_module" and isinstance(modules.get(node.target), ResizeLike):
            history[node] = history.get(node.args[1], ())  # the size of what it meets
        elif (node.op == "call_module" and isinstance(modules.get(node.target), _ADAPTIVE)) or \
                (node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS):
            history[node] = ()
        else:
            spatial = [h for h in inputs if h]
            for other in spatial[1:]:
                if chained(spatial[0], other) or chained(other, spatial[0]):
                    continue
                for a, b in zip(reversed(spatial[0]), reversed(other)):
                    uf.union(a, b)
            history[node] = max(spatial, key=len) if spatial else ()


def _functional_pool(node: torch.fx.Node, layers: Sequence[str]) -> Optional[nn.Module]:
    """The pooling module equal to a strided functional pooling call (``F.max_pool2d(x, 3, stride=2)``),
    or None (not a pooling call, stride 1, arguments that are not constants, indices returned)."""
    if node.op != "call_function" or node.target not in _FUNCTIONAL_POOLS:
        return None
    kind, cls, names = _FUNCTIONAL_POOLS[node.target]
    if kind not in layers or len(node.args) - 1 > len(names):
        return None
    kwargs = dict(zip(names, node.args[1:]), **{k: v for k, v in node.kwargs.items() if k in names})
    if set(node.kwargs) - set(names) or any(isinstance(v, torch.fx.Node) for v in kwargs.values()):
        return None
    if kwargs.get("return_indices") or "kernel_size" not in kwargs:
        return None
    kwargs.pop("return_indices", None)
    if kwargs.get("stride") is None:  # as the functional form: the stride defaults to the kernel
        kwargs["stride"] = kwargs["kernel_size"]
    module = cls(**kwargs)
    return module if any(s != 1 for s in _strides_of(module)) else None


def _rewrite_block(model: nn.Module, path: str, edit: Callable[[torch.fx.GraphModule, Dict[str, nn.Module]], int]
                   ) -> nn.Module:
    """Traces the block at ``path`` ('' for ``model`` itself) into a ``torch.fx.GraphModule`` of
    the same class name and parameters, lets ``edit(graph_module, the block's modules)`` change
    its graph (returning how many changes), and puts it in the block's place when anything changed.
    Returns the model (the GraphModule itself when ``path`` is ''); untraceable blocks stay."""
    block = model.get_submodule(path) if path else model
    try:
        block_graph = _LeafTracer(()).trace(block)
    except Exception:
        return model
    rewritten = torch.fx.GraphModule(block, block_graph, class_name=type(block).__name__)
    if not edit(rewritten, dict(block.named_modules())):
        return model
    rewritten.graph.lint()
    rewritten.recompile()
    rewritten.train(block.training)
    if not path:
        return rewritten
    _set_submodule(model, path, rewritten)
    return model


def _modules_for_functional_pools(model: nn.Module, blocks: Sequence[str], layers: Sequence[str]) -> List[str]:
    """Rewrites, in place, each block (a submodule, never ``model`` itself) whose forward calls a
    strided functional pooling (torchvision's Inception blocks: ``F.max_pool2d(x, 3, stride=2)``)
    as a ``torch.fx.GraphModule`` of that block calling an equal pooling module instead
    (``<block>.functional_pool<i>``), which can then be converted like any layer. The block keeps
    its submodules, parameters and state_dict keys; it loses its class (a GraphModule). ``blocks``:
    from :func:`_blocks_to_rewrite`. Returns the new modules' names; blocks that cannot be traced
    are left as they are."""
    added = []

    def edit(rewritten: torch.fx.GraphModule, _modules) -> int:
        count = 0
        for node in list(rewritten.graph.nodes):
            module = _functional_pool(node, layers)
            if module is None:
                continue
            name = f"functional_pool{count}"
            count += 1
            rewritten.add_submodule(name, module)
            with rewritten.graph.inserting_after(node):
                call = rewritten.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(call)
            rewritten.graph.erase_node(node)
            added.append(f"{path}.{name}")
        return count

    for path in blocks:
        _rewrite_block(model, path, edit)
    return added


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


_MEETING_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, torch.cat,
                      torch.stack, torch.concat}
_MEETING_METHODS = {"add", "sub", "mul", "add_", "mul_"}


def _upsampling(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> Optional[Dict[str, Any]]:
    """``{mode, align_corners}`` of an upsampling by a fixed ``scale_factor`` (``nn.Upsample`` or
    ``F.interpolate``), else None."""
    if node.op == "call_module" and isinstance(modules.get(node.target), nn.Upsample):
        module = modules[node.target]
        if module.scale_factor is not None:
            return {"mode": module.mode, "align_corners": module.align_corners}
    if node.op == "call_function" and node.target is F.interpolate:
        kwargs = dict(zip(("size", "scale_factor", "mode", "align_corners"), node.args[1:]), **node.kwargs)
        if kwargs.get("size") is None and kwargs.get("scale_factor") is not None:
            return {"mode": kwargs.get("mode", "nearest"), "align_corners": kwargs.get("align_corners")}
    return None


def _meets(user: torch.fx.Node) -> bool:
    return (user.op == "call_function" and user.target in _MEETING_FUNCTIONS) or \
        (user.op == "call_method" and user.target in _MEETING_METHODS)


def _sizes_follow_meetings(model: nn.Module, blocks: Sequence[str], inplace_root: bool) -> nn.Module:
    """Rewrites each fixed-factor upsampling whose output meets another tensor (added,
    concatenated, ...) as :class:`ResizeLike` that tensor, in the block where they meet (a
    ``torch.fx.GraphModule`` of it, with the same parameters); the model itself is rewritten only
    when it is ours (not ``inplace``). ``blocks``: from :func:`_blocks_to_rewrite`. Returns the
    model (a GraphModule when it was rewritten)."""
    def edit(rewritten: torch.fx.GraphModule, block_modules: Dict[str, nn.Module]) -> int:
        count = 0
        for node in list(rewritten.graph.nodes):
            spec = _upsampling(node, block_modules)
            if spec is None:
                continue
            for user in list(node.users):
                others = [a for a in user.all_input_nodes if a is not node] if _meets(user) else []
                if not others:
                    continue
                name = f"resize_like{count}"
                count += 1
                rewritten.add_submodule(name, ResizeLike(**spec))
                with rewritten.graph.inserting_before(user):
                    resized = rewritten.graph.call_module(name, (node.args[0], others[0]))
                user.replace_input_with(node, resized)
            if not node.users:
                rewritten.graph.erase_node(node)
        return count

    for path in sorted(blocks, key=len, reverse=True):  # inner blocks first
        if path or not inplace_root:
            model = _rewrite_block(model, path, edit)
    return model


def _module_path(node: torch.fx.Node) -> str:
    """The name of the innermost module whose forward made ``node`` ('' for the model itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _blocks_to_rewrite(model: nn.Module, layers: Sequence[str], exclude: Iterable[str]
                       ) -> Tuple[List[str], List[str]]:
    """From one trace of ``model``: the blocks (never the model itself) that call a strided
    functional pooling, and the blocks ('' for the model) where a fixed-factor upsampling meets
    another tensor. Both empty when the model cannot be traced."""
    try:
        graph = _LeafTracer(()).trace(model)
    except Exception:
        return [], []
    modules = dict(model.named_modules())
    pools: List[str] = []
    meetings: List[str] = []
    for node in graph.nodes:
        if _functional_pool(node, layers) is not None:
            path = _module_path(node)
            if path and path not in pools and path not in exclude:
                pools.append(path)
        elif _upsampling(node, modules) is not None:
            for path in (_module_path(user) for user in node.users if _meets(user)):
                if path not in meetings:
                    meetings.append(path)
    return pools, meetings


def _ties_by_structure(model: nn.Module, layers: Sequence[str], uf: _UnionFind) -> None:
    """The fallback: in a block with a ``downsample`` shortcut (torchvision's and timm's ResNets),
    the shortcut's strided layer and the main branch's layer of the same strides."""
    for block_name, block in model.named_modules():
        downsample = getattr(block, "downsample", None)
        if not isinstance(downsample, nn.Sequential) or not len(downsample):
            continue
        prefix = f"{block_name}." if block_name else ""
        shortcut = next((f"{prefix}downsample.{n}" for n, m in downsample.named_children()
                         if _is_downsampling(m, layers)), None)
        if shortcut is None:
            continue
        strides = _strides_of(model.get_submodule(shortcut))
        for name, module in block.named_modules():
            if name and not name.startswith("downsample") and _is_downsampling(module, layers) \
                    and _strides_of(module) == strides:
                uf.union(f"{prefix}{name}", shortcut)
                break


# ----------------------------------------------------------------------------------------------
# The proof: move each pooling layer's output size and run the network on shapes only


class _Probe(nn.Module):
    """Stands in for a pooling instance: the output of the size the layer gives now, plus ``delta``."""

    def __init__(self, output_size: Callable):
        super().__init__()
        self.output_size, self.delta = output_size, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(n + self.delta for n in self.output_size(tuple(x.shape[2:])))
        return x.new_zeros(tuple(x.shape[:2]) + size)


def _with_probes(model: nn.Module, device) -> Tuple[nn.Module, Dict[int, _Probe]]:
    """A copy of ``model`` on ``device`` whose pooling instances are probes (shared stays shared);
    returns it and ``{id(original pooling layer): its probe in the copy}``."""
    probes: Dict[int, _Probe] = {}
    for _, layer in pooling.pooling_layers(model):
        probes.setdefault(id(layer), _Probe(layer.output_size))
    originals = {}
    for parent in model.modules():  # swap in place (cheap), copy, swap back
        for child_name, child in list(parent.named_children()):
            if id(child) in probes:
                originals[(parent, child_name)] = child
                setattr(parent, child_name, probes[id(child)])
    memo: Dict[int, object] = {}
    if device == "meta":  # the weights are copied as meta tensors straight away: no real copy of them
        for param in model.parameters():
            memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        for buffer in model.buffers():
            memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    try:
        copied = copy.deepcopy(model, memo)
    finally:
        for (parent, child_name), child in originals.items():
            setattr(parent, child_name, child)
    if device == "meta":
        copied = copied.to("meta")
    return copied.eval(), {key: memo[id(probe)] for key, probe in probes.items()}


def _runs(model: nn.Module, x: torch.Tensor) -> Optional[str]:
    try:
        with torch.no_grad():
            model(x)
    except Exception as err:  # any failure of the forward is what the proof looks for
        return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    return None


def _prove(model: nn.Module, changes: List[Change], example: torch.Tensor) -> None:
    """Raises ConversionError unless the network runs at the initial strides and with each
    trainable pooling instance's output size moved on its own, and all moved at random."""
    copied, probes = _with_probes(model, "meta")
    x = torch.empty(example.shape, dtype=example.dtype, device="meta")
    failure = _runs(copied, x)
    if failure is not None:  # an operation without a meta kernel? try for real
        copied, probes = _with_probes(model, example.device)
        x = example
        failure = _runs(copied, x)
    if failure is not None:
        names = ", ".join(sorted({c.name for c in changes}))
        raise ConversionError(
            f"the converted model does not run on an input of shape {tuple(example.shape)} at its initial strides "
            f"({failure}). A converted layer may feed one that needs a fixed size (a position embedding, a "
            f"Linear after flatten): leave it out with exclude=[...] (converted: {names}), or pass the input "
            f"shape the model expects as example_input")
    instance_of = {}  # pooling name -> probe
    for change in changes:
        if " then " in change.pooling:  # a chain of other layers' instances, moved with them
            continue
        layer = model.get_submodule(change.pooling)
        if layer.trainable and id(layer) in probes:
            instance_of[change.pooling] = probes[id(layer)]
    members: Dict[str, List[str]] = {}
    for change in changes:
        members.setdefault(change.pooling, []).append(change.name)
    broken = []
    for name, probe in instance_of.items():
        probe.delta = 1
        failure = _runs(copied, x)
        probe.delta = 0
        if failure is not None:
            broken.append(f"{' + '.join(members[name])} ({failure})")
    if not broken and len(instance_of) > 1:
        rng = random.Random(0)
        for probe in instance_of.values():
            probe.delta = rng.choice((0, 1, 2))
        failure = _runs(copied, x)
        for probe in instance_of.values():
            probe.delta = 0
        if failure is not None:
            broken.append(f"several layers moved at once ({failure})")
    if broken:
        raise ConversionError(
            "the converted model breaks when these pooling layers' strides move, as training moves them: "
            + "; ".join(broken) + ". Their outputs meet other tensors whose sizes do not follow them: leave them "
            "out with exclude=[...], or convert with a fixed pooling (pooling_cls=FixedSpectralPooling)")


def _default_example(model: nn.Module, ndim: int) -> Optional[torch.Tensor]:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if first is None:
        return None
    param = next(model.parameters(), None)
    return torch.zeros((1, first.in_channels) + _DEFAULT_SIZES[ndim],
                       device=param.device if param is not None else "cpu")


# ----------------------------------------------------------------------------------------------
# convert, freeze


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
    layers = tuple(layers)
    unknown = [k for k in layers if k not in _KINDS and k != "blur"]
    if unknown:
        raise ValueError(f"layers must be among {sorted(_KINDS) + ['blur']}, but got {unknown}")
    exclude = set(exclude)
    names = {name for name, _ in model.named_modules()}
    missing = sorted(exclude - names)
    if missing:
        raise ValueError(f"exclude names layers that are not in the model: {missing}")
    family = _family(pooling_cls)
    pool_blocks, meeting_blocks = _blocks_to_rewrite(model, layers, exclude)
    if pool_blocks or meeting_blocks:
        caller_owns = inplace
        model = model if inplace else copy.deepcopy(model)  # the same block names in the copy
        inplace = True  # the copy is ours now
        _modules_for_functional_pools(model, pool_blocks, layers)
        model = _sizes_follow_meetings(model, meeting_blocks, inplace_root=caller_owns)
    targets = [name for name, m in model.named_modules() if _is_downsampling(m, layers) and name not in exclude]
    if not targets:
        return (model if inplace else copy.deepcopy(model)), []

    # pooling layers already in the model (e.g. placed in timm's aa_layer slot): a converted layer
    # whose output meets theirs reuses them
    placed = {name: _pooling_strides(m) for name, m in pooling.pooling_layers(model) if name not in exclude}
    placed = {name: s for name, s in placed.items() if s is not None}
    uf = _UnionFind(list(targets) + list(placed))
    chains: Dict[str, Tuple[str, ...]] = {}  # a layer -> the chain of layers whose poolings it reuses
    if share_residual:
        try:
            strides = {n: _strides_of(model.get_submodule(n)) for n in targets}
            _ties_by_data_flow(model, list(targets) + list(placed), uf, {**strides, **placed}, chains)
        except Exception as err:  # torch.fx cannot trace data-dependent Python control flow
            warnings.warn(
                f"convert: {type(model).__name__} could not be traced with torch.fx "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); layers are shared by "
                f"the 'downsample' shortcut rule only, and these were not checked by data flow: {', '.join(targets)}. "
                f"The proof after conversion still runs (check=True).", stacklevel=2)
            _ties_by_structure(model, layers, uf)

    model = model if inplace else copy.deepcopy(model)
    groups: Dict[str, List[str]] = {}
    for name in targets:
        groups.setdefault(uf.find(name), []).append(name)
    instances: Dict[str, Tuple[nn.Module, Tuple[int, ...]]] = {}  # first layer of a group -> (pooling, its strides)
    changes: List[Change] = []
    location: Dict[str, str] = {}
    for name, strides in placed.items():  # a group with a pooling layer already in the model uses it
        group = groups.setdefault(uf.find(name), [])
        if not group or group[0] not in placed:
            group.insert(0, name)
            instances[name] = (model.get_submodule(name), strides)
    for name in [t for t in targets if t not in chains] + [t for t in targets if t in chains]:
        module = model.get_submodule(name)
        strides, ndim = _strides_of(module), _ndim_of(module)
        if name in chains:  # R(2+1)D's shortcut: the pooling instances of the chain it stands for, in order
            firsts = [groups[uf.find(c)][0] for c in chains[name]]
            pool = nn.Sequential(*[instances[f][0] for f in firsts])
            module.stride = (1,) * ndim
            pad = _same_padding(module, ndim)
            parts = [("0", module), ("1", pool)] if pad is None else [("pad", pad), ("0", module), ("1", pool)]
            _set_submodule(model, name, nn.Sequential(collections.OrderedDict(parts)))
            changes.append(Change(name, _kind_of(module, layers), strides, " then ".join(f"{f}.1" for f in firsts),
                                  " + ".join(chains[name])))
            continue
        group = groups[uf.find(name)]
        first = group[0]  # converted first: its pooling is registered as FIRST.1
        if first in instances:
            pool, first_strides = instances[first]
            if first_strides != strides:
                raise ConversionError(
                    f"{first} (stride {first_strides}) and {name} (stride {strides}) feed the same operation but "
                    f"downsample by different factors, so they cannot share a pooling layer; leave one out with "
                    f"exclude=[...]")
        else:
            cls = family[ndim] if family is not None else pooling_cls
            pool = cls(strides=strides, **pooling_kwargs)
            instances[first] = (pool, strides)
        kind = _kind_of(module, layers)
        if first not in location:  # where the group's instance is registered
            location[first] = first if first in placed or kind == "blur" else f"{first}.1"
        pool_name = location[first]
        if kind == "blur":  # the blur and its subsampling both: the pooling layer replaces the module
            _set_submodule(model, name, pool)
        else:
            module.stride = (1,) * ndim
            pad = _same_padding(module, ndim) if len(group) > 1 else None
            parts = [("0", module), ("1", pool)] if pad is None else [("pad", pad), ("0", module), ("1", pool)]
            _set_submodule(model, name, nn.Sequential(collections.OrderedDict(parts)))
        changes.append(Change(name, kind, strides, pool_name, first if name != first else None))

    if check:
        if example_input is None:
            example_input = _default_example(model, max(len(c.strides) for c in changes))
        if example_input is None:
            warnings.warn("convert: no example_input and no convolution to infer its channels from; "
                          "the result was not proved (pass example_input=...)", stacklevel=2)
        else:
            _prove(model, changes, example_input)
    return model, changes



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
