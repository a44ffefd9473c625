"""Beyond the reference: complexity term, FLOPs, converting models, freezing, reports."""
import json
import os

import pytest
import torch
import torchvision
from torch import nn

import diffstride
from diffstride import pooling, resnet
from diffstride.complexity import complexity_loss, count_flops, forward_trace
from diffstride.examples import main as main_lib
from diffstride.examples import report

from .conftest import onnxruntime_outputs
from .test_train import TINY


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


# ------------------------------------------------------------------------------------------
# convert


@pytest.mark.parametrize("factory", [torchvision.models.resnet18, torchvision.models.resnet50])
def test_convert_torchvision_resnets(factory):
    torch.manual_seed(0)
    original = factory(weights=None)
    model, changes = diffstride.convert(original)
    names = [c.name for c in changes]
    assert "conv1" in names and "maxpool" in names and "layer2.0.downsample.0" in names
    for stage in ("layer2", "layer3", "layer4"):
        block = model.get_submodule(f"{stage}.0")
        main = block.conv1 if factory is torchvision.models.resnet18 else block.conv2
        assert isinstance(main[1], pooling.DiffStride) and block.downsample[0][1] is main[1]  # one shared instance
        assert main[0].stride == (1, 1)
    assert torch.equal(model.conv1[0].weight, original.conv1.weight)  # weights kept
    assert original.conv1.stride == (2, 2)  # the original is untouched
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out.logsumexp(-1).mean().backward()
    strides = [m.strides for _, m in pooling.pooling_layers(model)]
    assert len(strides) == 5 and all(s.grad is not None and s.grad.abs().sum() > 0 for s in strides)
    opt.step()
    assert "shared with layer2.0.conv1" in str(changes[names.index("layer2.0.downsample.0")]) or \
        "shared with layer2.0.conv2" in str(changes[names.index("layer2.0.downsample.0")])


def test_convert_with_subsampling_reproduces_the_original_outputs():
    """Stride-1 layer + SpatialPooling (subsampling) is the strided layer: same outputs, weights kept."""
    torch.manual_seed(0)
    original = torchvision.models.resnet18(weights=None).eval()
    model, _ = diffstride.convert(original, pooling_cls=pooling.SpatialPooling)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)


def test_convert_options_choose_which_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AvgPool2d(2), nn.MaxPool2d(3, stride=2, padding=1),
                        nn.Conv2d(4, 4, 1))
    only_conv, changes = diffstride.convert(net, layers=("conv",))
    assert [c.kind for c in changes] == ["conv"] and isinstance(only_conv[1], nn.AvgPool2d)
    pools, changes = diffstride.convert(net, pooling_cls=pooling.FixedSpectralPooling, layers=("avgpool", "maxpool"))
    assert [(c.name, c.kind, c.strides) for c in changes] == [("1", "avgpool", (2, 2)), ("2", "maxpool", (2, 2))]
    assert pools[1][0].stride == (1, 1) and isinstance(pools[1][1], pooling.FixedSpectralPooling)
    assert pools(torch.randn(1, 3, 32, 32)).shape[1] == 4
    with pytest.raises(ValueError, match=r"layers must be among \['avgpool', 'conv', 'maxpool'\], but got \['lstm'\]"):
        diffstride.convert(net, layers=("lstm",))


def test_convert_passes_pooling_arguments():
    model, _ = diffstride.convert(torchvision.models.resnet18(weights=None), smoothness_factor=2.0, layers=("conv",))
    assert all(m.smoothness_factor == 2.0 for _, m in pooling.pooling_layers(model))


# ------------------------------------------------------------------------------------------
# freeze


def _trained_model():
    torch.manual_seed(0)
    model = resnet.Resnet([4, 8, 8], [1, 2, 2], num_output_classes=3, pooling_cls=pooling.DiffStride, num_layers=1,
                          kernel_size=3)
    with torch.no_grad():
        for i, (_, layer) in enumerate(pooling.pooling_layers(model)):
            layer.strides.copy_(torch.tensor([1.7 + i, 2.3 + 0.5 * i]))
    return model.eval()


def test_freeze_gives_the_same_outputs_without_stride_parameters():
    model = _trained_model()
    frozen = diffstride.freeze(model)
    assert not [n for n, _ in frozen.named_parameters() if n.endswith("strides")]
    assert [n for n, _ in frozen.named_buffers() if n.endswith("strides")]
    assert [n for n, _ in model.named_parameters() if n.endswith("strides")]  # original untouched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(frozen(x), model(x), atol=1e-6)
    frozen.load_state_dict(frozen.state_dict())
    # dynamic=False: after other compiles of the same code with other input sizes, dynamo would
    # otherwise make the sizes symbolic, and the frozen plan is Python arithmetic on them
    compiled = torch.compile(frozen, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_frozen_model_exports_to_onnx_and_runs_in_onnxruntime():
    model = _trained_model()
    frozen = diffstride.freeze(model)
    x = torch.randn(2, 3, 32, 32)
    out = onnxruntime_outputs(frozen, x)
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-4)


# ------------------------------------------------------------------------------------------
# the complexity weight in training, and reports


def _train(workdir, extra, epochs=2, seed=1):
    args = ["--gin_config=mnist.gin", f"--workdir={workdir}", f"--seed={seed}",
            f"--gin_bindings=train.train.num_epochs = {epochs}"] + [f"--gin_bindings={b}" for b in TINY + list(extra)]
    assert main_lib.main(args) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_complexity_weight_ends_with_larger_strides_and_fewer_flops(tmp_path):
    plain = _train(str(tmp_path / "w0"), [])
    costly = _train(str(tmp_path / "w1"), ["train.train.complexity_weight = 2.0"])
    product = lambda m: [s[0] * s[-1] for s in (v["strides"] for v in m["pooling"].values())]  # noqa: E731
    assert all(c > p for c, p in zip(product(costly), product(plain)))
    assert costly["flops"] < plain["flops"] and costly["complexity"] < plain["complexity"]
    assert costly["run"]["complexity_weight"] == 2.0


@pytest.mark.slow
def test_report_table_and_plots_from_real_runs(tmp_path, capsys):
    runs = [str(tmp_path / f"diff{seed}") for seed in (1, 2)] + [str(tmp_path / "fixed")]
    accs = [_train(runs[0], [], seed=1)["test_accuracy"], _train(runs[1], [], seed=2)["test_accuracy"]]
    _train(runs[2], ["resnet.Resnet.pooling_cls = @pooling.FixedSpectralPooling"], seed=1)
    out = tmp_path / "report"
    assert report.main(runs + ["--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "| pooling | mnist, strides 1, 2 |" in table
    mean = 100 * sum(accs) / 2
    std = 100 * abs(accs[0] - accs[1]) / 2 ** 0.5
    assert f"| DiffStride | {mean:.2f} ± {std:.2f} (2 runs) |" in table
    assert "| FixedSpectralPooling |" in table and "(1 run)" in table
    for name in ("strides.png", "accuracy.png", "output_sizes.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert report.main([str(tmp_path), "--out", str(out)]) == 2
    assert "is not a finished training run" in capsys.readouterr().err
