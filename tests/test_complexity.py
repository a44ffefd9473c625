"""complexity_loss (the paper's term, in registration or forward order, and weighted by the convolutions' cost) and count_flops."""
import pytest
import torch
import torchvision
from torch import nn

from diffstride import pooling, resnet
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
