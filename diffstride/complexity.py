"""Cost of a network at its current strides: a differentiable complexity term and a FLOPs count.

The strides of DiffStride are variables, so the cost of the network can be penalised (the
paper's section 3):

    J(S) = Σ_l Π_{i <= l} 1 / (S_h^i · S_w^i)        (l: downsampling layers in forward order)

(the product over every spatial axis for 1-D and 3-D layers: ``layer.stride_product()``)

and :func:`count_flops` counts the multiply-accumulates at the output sizes the pooling layers
produce now.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from diffstride import pooling as pooling_lib

__all__ = ["complexity_loss", "count_flops", "forward_trace", "ForwardTrace", "floor", "macs_estimate",
           "budget_penalty", "fit_to_budget"]


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
    device = _device_of(model)
    if weighting == "paper":
        cumulative = _downsampling_factors(layers, order, device)
        if not cumulative:
            return torch.zeros((), device=device)
        return torch.stack(cumulative).sum()
    total = _strided_macs(layers, trace, device)
    norm = sum(macs * trace.input_pixels / stride_area for macs, _, index, stride_area in trace.convs if index != -2)
    return total / norm if norm else total


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _downsampling_factors(layers: Dict[str, nn.Module], order: Sequence[str], device) -> List[torch.Tensor]:
    """``Π_{i<=l} 1/(S_h^i S_w^i)`` for each pooling layer ``l`` in ``order``, differentiable."""
    cumulative, running = [], torch.ones((), device=device)
    for name in order:
        running = running / layers[name].stride_product().to(device)
        cumulative.append(running)
    return cumulative


def _strided_macs(layers: Dict[str, nn.Module], trace: ForwardTrace, device) -> torch.Tensor:
    """``Σ_c macs_c · P · Π_{i<=l(c)} 1/(S_h^i S_w^i) / stride_area_c`` over the convolutions of
    ``trace`` (linear layers after global pooling left out): the multiply-adds the strides drive."""
    cumulative = _downsampling_factors(layers, trace.pooling, device)
    total = torch.zeros((), device=device)
    for macs, _, index, stride_area in trace.convs:
        if index == -2:
            continue
        factor = cumulative[index] if index >= 0 else torch.ones((), device=device)
        total = total + macs * trace.input_pixels * factor / stride_area
    return total


# --------------------------------------------------------------------------------------------
# Compute budgets: the fewest multiply-adds a network can reach, and keeping it within a budget.

#: A stride beyond every input size: ``size / S < 2``, so every DiffStride output is at its
#: smallest (about ``2 + 2R`` samples per axis); clipped to ``upper_limit_stride`` where one is set.
_UNBOUNDED_STRIDE = 1e6


def _trainable_layers(model: nn.Module) -> List[nn.Module]:
    return [m for _, m in pooling_lib.pooling_layers(model) if m.trainable]


@contextlib.contextmanager
def _strides_set_to(layers: Sequence[nn.Module], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """The layers' strides temporarily replaced by ``values`` (restored afterwards)."""
    saved = [layer.strides.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer, v in zip(layers, values):
                layer.strides.copy_(v)
        yield
    finally:
        with torch.no_grad():
            for layer, v in zip(layers, saved):
                layer.strides.copy_(v)
        for layer in layers:
            layer._sync_known_values()


def floor(model: nn.Module, input_size: Sequence[int]) -> int:
    """The fewest multiply-adds per example ``model`` can reach by training its strides: every
    trainable DiffStride stride at its upper limit (``upper_limit_stride``, or beyond every input
    size), counted exactly as :func:`count_flops` (the ``size / S + 2R`` samples each DiffStride
    output keeps per axis included). Fixed poolings and convolutions count as they are.

    A budget below the floor cannot be met: lower it with a smaller ``smoothness_factor`` (the
    ``2R`` edge), a higher ``upper_limit_stride``, or a smaller network.

    Example:
        >>> from diffstride import pooling
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), pooling.DiffStride(strides=2.0),
        ...                     nn.Conv2d(8, 8, 3, padding=1))
        >>> floor(net, (1, 32, 32)) < count_flops(net, (1, 32, 32))
        True
    """
    layers = _trainable_layers(model)
    top = [torch.full_like(layer.strides, layer.upper_limit_stride or _UNBOUNDED_STRIDE) for layer in layers]
    with _strides_set_to(layers, top):
        return count_flops(model, input_size)


def macs_estimate(model: nn.Module, trace: ForwardTrace) -> torch.Tensor:
    """The multiply-adds per example as a differentiable function of the strides, without the
    ``2R`` edge: ``Σ_c macs_c · P · Π_{i<=l(c)} 1/(S_h^i S_w^i)`` (+ the linear layers), i.e.
    :func:`complexity_loss` with ``weighting='flops'`` before normalisation. Below
    :func:`count_flops`, whose exact count includes the edge; :func:`budget_penalty` scales it
    to the exact count."""
    linear = sum(macs * pixels for macs, pixels, index, _ in trace.convs if index == -2)  # a constant
    return _strided_macs(dict(pooling_lib.pooling_layers(model)), trace, _device_of(model)) + linear


def budget_penalty(model: nn.Module, trace: ForwardTrace, budget: float, exact: float) -> torch.Tensor:
    """``relu(log(M / budget))``: zero once the network is within ``budget`` multiply-adds, and
    otherwise a push on the strides whose gradient does not vanish as they grow (unlike the
    paper's ``Σ Π 1/S``). ``M`` is :func:`macs_estimate` scaled to ``exact``, the exact count at
    the current strides (:func:`count_flops`, refreshed by the caller every so often)."""
    estimate = macs_estimate(model, trace)
    scaled = estimate * (exact / max(float(estimate.detach()), 1e-12))
    return torch.relu(torch.log(scaled / budget))


def fit_to_budget(model: nn.Module, input_size: Sequence[int], budget: float, steps: int = 24) -> Tuple[int, float]:
    """Brings ``model`` within ``budget`` multiply-adds per example by scaling every trainable
    DiffStride stride by one common factor ``α >= 1`` (the smallest found by bisection, exact
    counts); a network already within budget is left as it is. Returns ``(MACs, α)``.

    Raises ``ValueError`` when the budget is below :func:`floor`.
    """
    layers = _trainable_layers(model)
    now = count_flops(model, input_size)
    if now <= budget or not layers:
        return now, 1.0
    base = [layer.strides.detach().clone() for layer in layers]

    def cost(alpha: float) -> int:
        with _strides_set_to(layers, [b * alpha for b in base]):
            return count_flops(model, input_size)

    low, high = 1.0, 2.0
    while cost(high) > budget:
        low, high = high, high * 2
        if high > _UNBOUNDED_STRIDE:
            raise ValueError(f"a budget of {budget:.4g} multiply-adds is below this network's floor of "
                             f"{floor(model, input_size)} (complexity.floor)")
    for _ in range(steps):  # in log space: the count falls about as 1/α^k
        mid = math.sqrt(low * high)
        if cost(mid) > budget:
            low = mid
        else:
            high = mid
    with torch.no_grad():
        for layer, b in zip(layers, base):
            layer.strides.copy_(b * high)
    for layer in layers:
        layer._sync_known_values()
    return count_flops(model, input_size), high
