"""Graph rewrites before a conversion (``torch.fx``): a strided functional pooling in a block's
``forward`` becomes a module of the block; an upsampling by a fixed factor whose output meets
another tensor becomes :class:`ResizeLike` that tensor.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from diffstride._convert_layers import FUNCTIONAL_POOLS, ResizeLike, set_submodule, strides_of
from diffstride._convert_ties import LeafTracer, meets, module_path


def _functional_pool(node: torch.fx.Node, layers: Sequence[str]) -> Optional[nn.Module]:
    """The pooling module equal to a strided functional pooling call (``F.max_pool2d(x, 3, stride=2)``),
    or None (not a pooling call, stride 1, arguments that are not constants, indices returned)."""
    if node.op != "call_function" or node.target not in FUNCTIONAL_POOLS:
        return None
    kind, cls, names = FUNCTIONAL_POOLS[node.target]
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
    return module if any(s != 1 for s in strides_of(module)) else None


def _rewrite_block(model: nn.Module, path: str, edit: Callable[[torch.fx.GraphModule, Dict[str, nn.Module]], int]
                   ) -> nn.Module:
    """Traces the block at ``path`` ('' for ``model`` itself) into a ``torch.fx.GraphModule`` of
    the same class name and parameters, lets ``edit(graph_module, the block's modules)`` change
    its graph (returning how many changes), and puts it in the block's place when anything changed.
    Returns the model (the GraphModule itself when ``path`` is ''); untraceable blocks stay."""
    block = model.get_submodule(path) if path else model
    try:
        block_graph = LeafTracer(()).trace(block)
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
    set_submodule(model, path, rewritten)
    return model


def modules_for_functional_pools(model: nn.Module, blocks: Sequence[str], layers: Sequence[str]) -> List[str]:
    """Rewrites, in place, each block (a submodule, never ``model`` itself) whose forward calls a
    strided functional pooling (torchvision's Inception blocks: ``F.max_pool2d(x, 3, stride=2)``)
    as a ``torch.fx.GraphModule`` of that block calling an equal pooling module instead
    (``<block>.functional_pool<i>``), which can then be converted like any layer. The block keeps
    its submodules, parameters and state_dict keys; it loses its class (a GraphModule). ``blocks``:
    from :func:`blocks_to_rewrite`. Returns the new modules' names; blocks that cannot be traced
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


def sizes_follow_meetings(model: nn.Module, blocks: Sequence[str], inplace_root: bool) -> nn.Module:
    """Rewrites each fixed-factor upsampling whose output meets another tensor (added,
    concatenated, ...) as :class:`ResizeLike` that tensor, in the block where they meet (a
    ``torch.fx.GraphModule`` of it, with the same parameters); the model itself is rewritten only
    when it is ours (not ``inplace``). ``blocks``: from :func:`blocks_to_rewrite`. Returns the
    model (a GraphModule when it was rewritten)."""
    def edit(rewritten: torch.fx.GraphModule, block_modules: Dict[str, nn.Module]) -> int:
        count = 0
        for node in list(rewritten.graph.nodes):
            spec = _upsampling(node, block_modules)
            if spec is None:
                continue
            for user in list(node.users):
                others = [a for a in user.all_input_nodes if a is not node] if meets(user) else []
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


def blocks_to_rewrite(model: nn.Module, layers: Sequence[str], exclude: Iterable[str]
                       ) -> Tuple[List[str], List[str]]:
    """From one trace of ``model``: the blocks (never the model itself) that call a strided
    functional pooling, and the blocks ('' for the model) where a fixed-factor upsampling meets
    another tensor. Both empty when the model cannot be traced."""
    try:
        graph = LeafTracer(()).trace(model)
    except Exception:
        return [], []
    modules = dict(model.named_modules())
    pools: List[str] = []
    meetings: List[str] = []
    for node in graph.nodes:
        if _functional_pool(node, layers) is not None:
            path = module_path(node)
            if path and path not in pools and path not in exclude:
                pools.append(path)
        elif _upsampling(node, modules) is not None:
            for path in (module_path(user) for user in node.users if meets(user)):
                if path not in meetings:
                    meetings.append(path)
    return pools, meetings
