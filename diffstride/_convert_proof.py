"""The proof of a converted network: each pooling layer's output size is moved on its own (as
training moves strides), then all at random, and the network must still run, on the ``meta``
device (shapes only, no arithmetic).
"""
from __future__ import annotations

import copy
import random
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from diffstride import pooling
from diffstride._convert_layers import DEFAULT_SIZES, Change, ConversionError


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


def prove(model: nn.Module, changes: List[Change], example: torch.Tensor) -> None:
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


def default_example(model: nn.Module, ndim: int) -> Optional[torch.Tensor]:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if first is None:
        return None
    param = next(model.parameters(), None)
    return torch.zeros((1, first.in_channels) + DEFAULT_SIZES[ndim],
                       device=param.device if param is not None else "cpu")
