"""complexity_loss (the paper's term, in registration or forward order, and weighted by the convolutions' cost) and count_flops."""
import pytest
import torch
import torchvision
from torch import nn

import math

from diffstride import complexity, pooling, resnet
from diffstride.complexity import complexity_loss, count_flops, forward_trace


# ------------------------------------------------------------------------------------------
# complexity_loss


def _two_stage(pool_a, pool_b):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pool_a, nn.Conv2d(4, 4, 3, padding=1), pool_b,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_paper_complexity_is_the_sum_of_cumulative_inverse_stride_products():
    model = _two_stage(pooling.DiffStride(strides=(2.0, 2.0)), pooling.DiffStride(strides=(3.0, 1.0)))
    j = complexity_loss(model)
    assert j.item() == pytest.approx(1 / 4 + 1 / (4 * 3))
    j.backward()
    s1, s2 = model[1].strides, model[3].strides
    # dJ/dS1_h = -(1/S1_h)·J ; dJ/dS2_h = -(1/S2_h)·1/(4·3)
    assert s1.grad.tolist() == pytest.approx([-j.item() / 2, -j.item() / 2])
    assert s2.grad.tolist() == pytest.approx([-1 / 12 / 3, -1 / 12 / 1])
    shared = nn.Sequential(nn.Conv2d(3, 4, 3), pooling.DiffStride(strides=2.5, shared_stride=True))
    assert complexity_loss(shared).item() == pytest.approx(1 / 6.25)
    # every spatial axis counts: 1-D one stride, 3-D three
    volume = nn.Sequential(nn.Conv3d(1, 2, 3), pooling.DiffStride3d(strides=(2.0, 1.5, 3.0)), pooling.DiffStride1d(2.0))
    assert complexity_loss(volume).item() == pytest.approx(1 / 9 + 1 / 18)


def test_complexity_follows_the_forward_order_when_traced():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = pooling.DiffStride(strides=3.0)   # registered first, runs second
            self.early = pooling.DiffStride(strides=2.0)

        def forward(self, x):
            return self.late(self.early(x))

    model = Reordered()
    assert forward_trace(model, (1, 32, 32)).pooling == ["early", "late"]
    assert complexity_loss(model, (1, 32, 32)).item() == pytest.approx(1 / 4 + 1 / 36)
    assert complexity_loss(model).item() == pytest.approx(1 / 9 + 1 / 36)  # registration order


def test_flops_weighted_complexity_tracks_the_counted_macs():
    """With FixedSpectralPooling (outputs exactly size / S), J_flops · (MACs at unit strides) equals
    the convolutions' MACs counted by count_flops."""
    model = _two_stage(pooling.FixedSpectralPooling(strides=2), pooling.FixedSpectralPooling(strides=2))
    size = (3, 32, 32)
    trace = forward_trace(model, size)
    unit = sum(macs * trace.input_pixels / area for macs, _, index, area in trace.convs if index != -2)
    conv_macs = 3 * 4 * 9 * 32 * 32 + 4 * 4 * 9 * 16 * 16
    assert complexity_loss(model, size, weighting="flops").item() * unit == pytest.approx(conv_macs)
    assert count_flops(model, size) == conv_macs + 4 * 2


def test_complexity_errors():
    with pytest.raises(ValueError, match="weighting must be 'paper' or 'flops', but got 'area'"):
        complexity_loss(nn.Sequential(), weighting="area")
    with pytest.raises(ValueError, match="needs input_size"):
        complexity_loss(nn.Sequential(pooling.DiffStride()), weighting="flops")


# ------------------------------------------------------------------------------------------
# count_flops


def test_count_flops_by_hand_on_a_small_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    expected = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 4 * 9 + 8 * 10
    assert count_flops(model, (3, 32, 32)) == expected


def test_count_flops_of_torchvision_resnet18_matches_its_published_count():
    model = torchvision.models.resnet18(weights=None)
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]  # GMACs at 224x224
    assert count_flops(model, (3, 224, 224)) / 1e9 == pytest.approx(published, abs=0.0005)


def test_count_flops_at_the_current_strides():
    model = resnet.resnet18(num_output_classes=10, pooling_cls=pooling.DiffStride)
    before = count_flops(model, (3, 32, 32))
    with torch.no_grad():
        model.blocks[3][0].pooling.strides.fill_(4.0)
    after = count_flops(model, (3, 32, 32))
    assert after < before
    # stride 4 on 20x20 keeps 7 + 7 rows and 8 rfft bins: 14x14 maps instead of 18x18 for the three
    # 512 -> 512 3x3 convolutions after the pooling (its own layer's first conv and shortcut run before it)
    assert before - after == (18 * 18 - 14 * 14) * 3 * 512 * 512 * 9


# --------------------------------------------------------------------------------------------
# Budgets: the floor, the penalty, the projection.


def _budget_net(smoothness=4.0, upper=None):
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1),
                         pooling.DiffStride(strides=2.0, smoothness_factor=smoothness, upper_limit_stride=upper),
                         nn.Conv2d(4, 8, 3, padding=1),
                         pooling.DiffStride(strides=(1.5, 2.5), smoothness_factor=smoothness, upper_limit_stride=upper),
                         nn.Conv2d(8, 8, 3, padding=1))


@pytest.mark.parametrize("smoothness, upper", [(4.0, None), (1.0, None), (2.0, 3.0)])
def test_the_floor_is_the_count_at_the_largest_strides_a_brute_force_search_finds(smoothness, upper):
    """The floor equals count_flops with every stride at its upper limit, and no stride setting of
    a brute-force grid (each layer's strides from 1 to far beyond the input) counts fewer."""
    import itertools

    net = _budget_net(smoothness, upper)
    shape = (1, 40, 36)
    layers = [m for _, m in pooling.pooling_layers(net)]
    before = [m.strides.detach().clone() for m in layers]
    floor = complexity.floor(net, shape)
    assert all(torch.equal(m.strides, b) for m, b in zip(layers, before))  # floor() restored the strides
    counts = []
    for values in itertools.product([1.0, 1.7, 3.0, 8.0, 40.0, 1e4], repeat=2):
        with torch.no_grad():
            for layer, v in zip(layers, values):
                layer.strides.fill_(v)
        counts.append(complexity.count_flops(net, shape))
    assert min(counts) == floor
    top = upper or 1e4
    with torch.no_grad():
        for layer in layers:
            layer.strides.fill_(top)
    assert complexity.count_flops(net, shape) == floor
    # the 2R edge: a smaller smoothness factor lowers the floor
    if upper is None and smoothness > 1:
        assert complexity.floor(_budget_net(1.0), shape) < floor


def test_the_budget_penalty_pushes_the_strides_up_only_while_over_budget():
    net = _budget_net()
    shape = (1, 40, 36)
    trace = complexity.forward_trace(net, shape)
    exact = complexity.count_flops(net, shape)
    over = complexity.budget_penalty(net, trace, exact / 2, exact)
    assert abs(over.item() - math.log(2)) < 1e-5  # scaled to the exact count: log(M / budget)
    over.backward()
    grads = [m.strides.grad for _, m in pooling.pooling_layers(net)]
    assert all((g < 0).all() for g in grads)  # descending the penalty raises every stride
    under = complexity.budget_penalty(net, trace, exact * 2, exact)
    assert under.item() == 0.0


def test_fit_to_budget_scales_the_strides_by_the_least_common_factor():
    net = _budget_net()
    shape = (1, 40, 36)
    start = complexity.count_flops(net, shape)
    budget = start * 0.6
    before = [m.strides.detach().clone() for _, m in pooling.pooling_layers(net)]
    macs, alpha = complexity.fit_to_budget(net, shape, budget)
    assert macs <= budget and macs == complexity.count_flops(net, shape) and alpha > 1
    after = [m.strides.detach() for _, m in pooling.pooling_layers(net)]
    assert all(torch.allclose(a, b * alpha) for a, b in zip(after, before))
    with torch.no_grad():  # a slightly smaller factor would not do
        for (_, m), b in zip(pooling.pooling_layers(net), before):
            m.strides.copy_(b * alpha / 1.01)
    assert complexity.count_flops(net, shape) > budget
    assert complexity.fit_to_budget(net, shape, start * 10) == (complexity.count_flops(net, shape), 1.0)
    with pytest.raises(ValueError, match="below this network's floor"):
        complexity.fit_to_budget(net, shape, complexity.floor(net, shape) - 1)
