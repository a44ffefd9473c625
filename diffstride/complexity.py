"""Cost of a network at its current strides: a differentiable complexity term and a FLOPs count.

The strides of DiffStride are variables, so the cost of the network can be penalised (the
paper's section 3):

    J(S) = Σ_l Π_{i <= l} 1 / (S_h^i · S_w^i)        (l: downsampling layers in forward order)

(the product over every spatial axis for 1-D and 3-D layers: ``layer.stride_product()``)

and :func:`count_flops` counts the multiply-accumulates at the output sizes the pooling layers
produce now.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from diffstride import pooling as pooling_lib

__all__ = ["complexity_loss", "count_flops", "forward_trace", "ForwardTrace"]


@dataclasses.dataclass
class ForwardTrace:
    """What one forward pass shows of a model's structure (see :func:`forward_trace`).

    Attributes:
        pooling: names of the pooling layers in the order they first run.
        convs: for every convolution and linear layer call, ``(macs_per_output_pixel,
            output_pixels, attributed pooling index or -1, conv stride area)``: the index is the
            pooling layer whose output the layer's input comes from (-1: the network input).
    """

    pooling: List[str]
    convs: List[Tuple[float, float, int, float]]
    input_pixels: float


def forward_trace(model: nn.Module, input_size: Sequence[int]) -> ForwardTrace:
    """Runs ``model`` once on zeros of shape ``(1, *input_size)`` (eval mode, no grad) and records
    the pooling layers' order and every convolution's and linear layer's cost and position."""
    layers = dict(pooling_lib.pooling_layers(model))
    name_of = {id(m): n for n, m in layers.items()}
    order: List[str] = []
    last_output: Dict[Tuple[int, ...], int] = {}  # spatial size -> index of the newest pooling layer giving it
    convs: List[Tuple[float, float, int, float]] = []

    def on_pool(module, inputs, output):
        name = name_of[id(module)]
        if name not in order:
            order.append(name)
        last_output[tuple(output.shape[2:])] = order.index(name)

    def on_conv(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.Linear):
            macs = module.in_features * module.out_features
            pixels = float(output.numel() // output.shape[-1] // max(output.shape[0], 1))
            convs.append((float(macs), pixels, -2, 1.0))  # -2: does not scale with the strides
            return
        k = 1
        for v in module.kernel_size:
            k *= v
        macs_per_pixel = k * module.in_channels * module.out_channels / module.groups
        pixels = float(output[0, 0].numel())
        stride_area = 1.0
        for s in module.stride:
            stride_area *= s
        convs.append((macs_per_pixel, pixels, last_output.get(tuple(x.shape[2:]), -1), stride_area))

    hooks = [m.register_forward_hook(on_pool) for m in layers.values()]
    hooks += [m.register_forward_hook(on_conv) for m in model.modules()
              if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    input_pixels = 1.0
    for n in input_size[1:]:
        input_pixels *= n
    return ForwardTrace(order, convs, input_pixels)


def count_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one example through the convolutions and linear layers of ``model``.

    ``input_size`` is one example's shape, e.g. ``(3, 32, 32)``. Counted at the output sizes the
    pooling layers produce at their current strides (one forward pass in eval mode). Other
    layers (norms, activations, the pooling layers themselves) are not counted.
    """
    trace = forward_trace(model, input_size)
    return int(round(sum(macs * pixels for macs, pixels, _, _ in trace.convs)))


def complexity_loss(
    model: nn.Module,
    input_size: Optional[Sequence[int]] = None,
    weighting: str = "paper",
    trace: Optional[ForwardTrace] = None,
) -> torch.Tensor:
    """A differentiable measure of the network's cost at its current strides.

    ``weighting='paper'``: the paper's ``J(S) = Σ_l Π_{i<=l} 1/(S_h^i S_w^i)`` over the pooling
    layers in forward order (registration order, or the order of one traced forward pass when
    ``input_size`` is given).

    ``weighting='flops'``: each stage weighted by the convolution cost it drives, so that J
    tracks FLOPs: ``Σ_c macs_c · P · Π_{i<=l(c)} 1/(S_h^i S_w^i)`` over the convolutions ``c``,
    where ``l(c)`` is the pooling layer whose output feeds ``c`` and ``P`` the input's pixel count,
    divided by the same sum at unit strides (so 1 means "no downsampling at all"). Linear layers
    after global pooling are a constant and left out. Needs ``input_size`` (one example's shape)
    or a ``trace`` from :func:`forward_trace`. The ``size / S + 2R`` overhead of DiffStride is not
    modelled (use :func:`count_flops` for the exact count).

    Returns a scalar tensor; gradients flow to every DiffStride's strides.
    """
    if weighting not in ("paper", "flops"):
        raise ValueError(f"weighting must be 'paper' or 'flops', but got {weighting!r}")
    layers = dict(pooling_lib.pooling_layers(model))
    if weighting == "flops" and trace is None:
        if input_size is None:
            raise ValueError("complexity_loss(weighting='flops') needs input_size (one example's shape) or a trace")
        trace = forward_trace(model, input_size)
    if trace is not None:
        order = trace.pooling
    elif input_size is not None:
        order = forward_trace(model, input_size).pooling
    else:
        order = list(layers)
    param = next(model.parameters(), None)
    like = param if param is not None else torch.zeros(())
    cumulative, running = [], torch.ones((), device=like.device)
    for name in order:
        running = running / layers[name].stride_product().to(like.device)
        cumulative.append(running)
    if weighting == "paper":
        if not cumulative:
            return torch.zeros((), device=like.device)
        return torch.stack(cumulative).sum()
    total = torch.zeros((), device=like.device)
    norm = 0.0
    for macs, _, index, stride_area in trace.convs:
        if index == -2:
            continue
        factor = cumulative[index] if index >= 0 else torch.ones((), device=like.device)
        total = total + macs * trace.input_pixels * factor / stride_area
        norm += macs * trace.input_pixels / stride_area
    return total / norm if norm else total
