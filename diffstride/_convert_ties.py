"""Which converted layers must share one pooling instance: their outputs meet (added,
concatenated, multiplied, ...) with no other downsampling in between, found by tracing the data
flow with ``torch.fx`` (or, for a model that cannot be traced, by torchvision's ``downsample``
shortcut rule).
"""
from __future__ import annotations

import operator
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from diffstride import pooling
from diffstride._convert_layers import ADAPTIVE, ADAPTIVE_FUNCTIONS, ResizeLike, is_downsampling, strides_of


class UnionFind:
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


class LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, with every layer to convert kept as one call (subclasses of
    ``nn.Conv3d`` and the like, e.g. torchvision's ``Conv3DSimple``, would be traced through)."""

    def __init__(self, leaves: Iterable[str]):
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (qualified_name in self.leaves or isinstance(module, (ResizeLike, pooling.PoolingLayer))
                or super().is_leaf_module(module, qualified_name))


def ties_by_data_flow(model: nn.Module, targets: Sequence[str], uf: UnionFind,
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
    graph = LeafTracer(target_set).trace(model)
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
        elif (node.op == "call_module" and isinstance(modules.get(node.target), ADAPTIVE)) or \
                (node.op == "call_function" and node.target in ADAPTIVE_FUNCTIONS):
            history[node] = ()
        else:
            spatial = [h for h in inputs if h]
            for other in spatial[1:]:
                if chained(spatial[0], other) or chained(other, spatial[0]):
                    continue
                for a, b in zip(reversed(spatial[0]), reversed(other)):
                    uf.union(a, b)
            history[node] = max(spatial, key=len) if spatial else ()


_MEETING_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, torch.cat,
                      torch.stack, torch.concat}


_MEETING_METHODS = {"add", "sub", "mul", "add_", "mul_"}


def meets(user: torch.fx.Node) -> bool:
    return (user.op == "call_function" and user.target in _MEETING_FUNCTIONS) or \
        (user.op == "call_method" and user.target in _MEETING_METHODS)


def module_path(node: torch.fx.Node) -> str:
    """The name of the innermost module whose forward made ``node`` ('' for the model itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def ties_by_structure(model: nn.Module, layers: Sequence[str], uf: UnionFind) -> None:
    """The fallback: in a block with a ``downsample`` shortcut (torchvision's and timm's ResNets),
    the shortcut's strided layer and the main branch's layer of the same strides."""
    for block_name, block in model.named_modules():
        downsample = getattr(block, "downsample", None)
        if not isinstance(downsample, nn.Sequential) or not len(downsample):
            continue
        prefix = f"{block_name}." if block_name else ""
        shortcut = next((f"{prefix}downsample.{n}" for n, m in downsample.named_children()
                         if is_downsampling(m, layers)), None)
        if shortcut is None:
            continue
        strides = strides_of(model.get_submodule(shortcut))
        for name, module in block.named_modules():
            if name and not name.startswith("downsample") and is_downsampling(module, layers) \
                    and strides_of(module) == strides:
                uf.union(f"{prefix}{name}", shortcut)
                break
