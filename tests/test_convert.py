"""convert() on any network: branches tied by data flow, the proof against moving strides, every
dimensionality, and the torchvision and timm zoos (convert, move the strides, train a step)."""
import random
import warnings

import pytest
import torch
import torchvision
from torch import nn

import diffstride
from diffstride import pooling, resnet
from diffstride.convert import ConversionError

from .conftest import move_strides as _move_strides, onnxruntime_outputs

timm = pytest.importorskip("timm")

TORCHVISION = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "efficientnet_b0", "mnasnet0_5", "regnet_x_400mf", "regnet_y_400mf",
               "shufflenet_v2_x0_5", "densenet121", "convnext_tiny", "vgg11", "squeezenet1_0", "swin_t"]
TIMM = ["resnet50", "resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "convnext_nano",
        "cspresnet50", "nf_resnet26", "tresnet_m", "resnetaa50"]
ZOO = [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
# ceil_mode max pooling: its last window hangs over the edge, which a stride-1 pooling then
# subsampling does not reproduce (squeezenet's 14 -> 7 where subsampling gives 6)
NOT_PLAIN_SUBSAMPLING = {("torchvision", "squeezenet1_0")}


def _make(source, name):
    torch.manual_seed(0)
    if source == "torchvision":
        return getattr(torchvision.models, name)(weights=None)
    return timm.create_model(name, pretrained=False)


class _Branches(nn.Module):
    """Two strided branches added, like a RegNet block: no ``downsample`` attribute to go by."""

    def __init__(self, traceable=True):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.proj = nn.Conv2d(3, 8, 1, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        self.traceable = traceable

    def forward(self, x):
        if not self.traceable and bool(x.sum() > -1e30):  # data-dependent Python: torch.fx cannot trace it
            x = x * 1.0
        return self.head(torch.relu(self.main(x) + self.proj(x)))


def test_branches_that_meet_share_one_pooling_instance_found_by_data_flow():
    model, changes = diffstride.convert(_Branches())
    assert [c.name for c in changes] == ["main.0", "proj"]
    assert model.main[0][1] is model.proj[1] and changes[1].shared_with == "main.0"
    _move_strides(model, random.Random(0))
    model(torch.randn(2, 3, 33, 33)).sum().backward()  # odd size: any mismatch would show


def test_an_untraceable_model_falls_back_with_a_warning_and_the_proof_names_the_hazard():
    with pytest.warns(UserWarning, match=r"could not be traced with torch.fx .* not checked by data flow: main.0, proj"):
        with pytest.raises(ConversionError, match=r"breaks when these pooling layers' strides move.*main\.0 \(.*proj \("):
            diffstride.convert(_Branches(traceable=False))
    # without the proof the hazard would only show once training moved the strides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = diffstride.convert(_Branches(traceable=False), check=False)
    model.main[0][1].strides.data.fill_(2.6)
    with pytest.raises(RuntimeError, match="must match the size"):
        model(torch.randn(2, 3, 32, 32))


def test_regnet_main_branch_and_shortcut_share_and_survive_moving_strides():
    """The issue's failure: regnet_y_400mf's f.b and proj drifted apart mid-run."""
    model, changes = diffstride.convert(torchvision.models.regnet_y_400mf(weights=None))
    shared = {frozenset((c.name, c.shared_with)) for c in changes if c.shared_with}
    assert shared == {frozenset((f"trunk_output.block{i}.block{i}-0.proj.0", f"trunk_output.block{i}.block{i}-0.f.b.0"))
                      for i in range(1, 5)}
    _move_strides(model, random.Random(1))
    model(torch.randn(2, 3, 72, 72)).sum().backward()


def test_a_layer_feeding_a_fixed_size_is_refused_at_conversion_and_can_be_excluded():
    vit = torchvision.models.vit_b_16(weights=None)
    with pytest.raises(ConversionError, match=r"does not run on an input of shape \(1, 3, 224, 224\) at its initial "
                                              r"strides .*exclude=\[\.\.\.\] \(converted: conv_proj\)"):
        diffstride.convert(vit)
    model, changes = diffstride.convert(vit, exclude=["conv_proj"])
    assert changes == [] and not pooling.pooling_layers(model)
    with pytest.raises(ValueError, match=r"exclude names layers that are not in the model: \['conv_prj'\]"):
        diffstride.convert(vit, exclude=["conv_prj"])
    # timm's ViT checks its input size and adds a position embedding: refused the same way
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with pytest.raises(ConversionError, match=r"at its initial strides .*\(converted: patch_embed.proj\)"):
        diffstride.convert(tiny)
    assert diffstride.convert(tiny, exclude=["patch_embed.proj"])[1] == []
    # an MLP after flatten needs the size the strided layer gave
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    with pytest.raises(ConversionError, match="at its initial strides"):
        diffstride.convert(net, example_input=torch.zeros(1, 1, 16, 16))
    # fixed strides never move: a subsampling conversion of the same net is fine
    fixed, _ = diffstride.convert(net, pooling_cls=pooling.SpatialPooling, example_input=torch.zeros(1, 1, 16, 16))
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(fixed(x), net(x), atol=1e-6)


class _Residual1d(nn.Module):
    def __init__(self, dims):
        super().__init__()
        conv, pool = {1: (nn.Conv1d, nn.AvgPool1d), 3: (nn.Conv3d, nn.AvgPool3d)}[dims]
        self.stem = nn.Sequential(conv(2, 4, 3, stride=2, padding=1), pool(2))
        self.main = conv(4, 4, 3, stride=2, padding=1)
        self.short = pool(2)  # kernel 2, stride 2: shrinks at stride 1, padded to meet the main branch
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.main(self.stem(x)) + self.short(self.stem(x))
        return self.head(y.flatten(2).mean(-1))


@pytest.mark.parametrize("dims, size, family", [(1, (64,), pooling.DiffStride1d), (3, (16, 16, 16), pooling.DiffStride3d)])
def test_1d_and_3d_models_convert_to_their_dimensionality(dims, size, family):
    net = _Residual1d(dims)
    model, changes = diffstride.convert(net, example_input=torch.zeros((1, 2) + size))
    assert [c.name for c in changes] == ["stem.0", "stem.1", "main", "short"]
    assert all(len(c.strides) == dims for c in changes)
    layers = [m for _, m in pooling.pooling_layers(model)]
    assert len(layers) == 3 and all(type(m) is family for m in layers)
    # names stay NAME.0 (the layer) and NAME.1 (the pooling); the padding is NAME.pad
    assert model.short.get_submodule("1") is model.main.get_submodule("1")
    assert isinstance(model.short.pad, nn.ReplicationPad1d if dims == 1 else nn.ReplicationPad3d)
    _move_strides(model, random.Random(2))
    model(torch.randn((2, 2) + size)).sum().backward()
    assert all(m.strides.grad is not None for m in layers)
    # subsampling: the original function (sizes divisible by the strides)
    sub, _ = diffstride.convert(net, pooling_cls=pooling.SpatialPooling, example_input=torch.zeros((1, 2) + size))
    x = torch.randn((2, 2) + size)
    assert torch.allclose(sub(x), net(x), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("source, name", ZOO, ids=[f"{s}-{n}" for s, n in ZOO])
def test_zoo_converts_survives_moving_strides_and_keeps_the_function_by_subsampling(source, name):
    original = _make(source, name).eval()
    # the input of the test below (tresnet's space-to-depth stem hides the 3 input channels from the default)
    model, changes = diffstride.convert(original, example_input=torch.zeros(1, 3, 64, 64))
    assert changes and all(c.strides != (1, 1) for c in changes)
    instances = {id(m) for _, m in pooling.pooling_layers(model)}
    assert len(instances) == len({c.pooling for c in changes})

    # training moves each instance on its own: the network still runs and every stride learns
    model.train()
    _move_strides(model, random.Random(hash(name) % 1000))
    out = model(torch.randn(2, 3, 64, 64))
    loss = out.float().logsumexp(-1).mean() + diffstride.complexity_loss(model)
    loss.backward()
    assert all(m.strides.grad is not None and torch.isfinite(m.strides.grad).all()
               for _, m in pooling.pooling_layers(model))

    # counted, and frozen: no stride parameters left, the same outputs
    model.eval()
    flops = diffstride.count_flops(model, (3, 64, 64))
    assert flops > 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    frozen = diffstride.freeze(model, inplace=True)
    assert not any(n.endswith("strides") for n, _ in frozen.named_parameters())
    with torch.no_grad():
        assert torch.allclose(frozen(x), before, atol=1e-5)

    # stride-1 layer + subsampling is the original layer
    if (source, name) not in NOT_PLAIN_SUBSAMPLING:
        sub, _ = diffstride.convert(original, pooling_cls=pooling.SpatialPooling,
                                    example_input=torch.zeros(1, 3, 64, 64))
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            ours, theirs = sub(x), original(x)
        # float32 convolutions at stride 1 + subsampling against stride 2 sum in another order
        # (which depends on the thread count): measured 7e-7 of the largest output (resnet50, 1 thread)
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_complexity_follows_the_traced_stage_order_on_a_converted_model():
    model, changes = diffstride.convert(torchvision.models.resnet18(weights=None))
    trace = diffstride.complexity.forward_trace(model, (3, 64, 64))
    assert trace.pooling == ["conv1.1", "maxpool.1", "layer2.0.conv1.1", "layer3.0.conv1.1", "layer4.0.conv1.1"]
    # J = sum of cumulative products 1/(S_h S_w) in that order: 1/4 + 1/16 + 1/64 + 1/256 + 1/1024
    j = diffstride.complexity_loss(model, (3, 64, 64))
    assert j.item() == pytest.approx(sum(4.0 ** -k for k in range(1, 6)), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf"])
def test_frozen_converted_models_export_to_onnx(name):
    model, _ = diffstride.convert(_make("torchvision", name))
    _move_strides(model, random.Random(3))
    frozen = diffstride.freeze(model).eval()
    x = torch.randn(1, 3, 64, 64)
    out = onnxruntime_outputs(frozen, x)
    with torch.no_grad():
        expected = frozen(x)
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-3)


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
    with pytest.raises(ValueError, match=r"layers must be among \['avgpool', 'conv', 'maxpool', 'blur'\], but got \['lstm'\]"):
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


VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18"]


@pytest.mark.parametrize("name", VIDEO)
def test_video_resnets_convert_with_anisotropic_strides_and_survive_moving_them(name):
    """torchvision's video ResNets: (1, 2, 2) stems and (2, 2, 2) stages; R(2+1)D factorises each
    strided convolution into (1, 2, 2) then (2, 1, 1), and its (2, 2, 2) shortcut gets those two
    pooling instances in order."""
    torch.manual_seed(0)
    original = getattr(torchvision.models.video, name)(weights=None).eval()
    x = torch.randn(1, 3, 12, 24, 24)  # small: smoothness 2 lets the last stage's 3x3x3 maps be pooled
    model, changes = diffstride.convert(original, example_input=x, smoothness_factor=2.0)
    layers = pooling.pooling_layers(model)
    assert all(isinstance(m, pooling.DiffStride3d) for _, m in layers)
    assert [c.strides for c in changes if c.name == "stem.0"] == [(1, 2, 2)]
    if name == "r2plus1d_18":
        shortcut = model.layer2[0].downsample[0][1]
        assert [tuple(m.strides.tolist()) for m in shortcut] == [(1.0, 2.0, 2.0), (2.0, 1.0, 1.0)]
        assert shortcut[0] is model.layer2[0].conv1[0][0][1] and shortcut[1] is model.layer2[0].conv1[0][3][1]
    model.train()
    _move_strides(model, random.Random(VIDEO.index(name)))
    loss = model(x.repeat(2, 1, 1, 1, 1)).logsumexp(-1).mean() + diffstride.complexity_loss(model)
    loss.backward()
    assert all(m.strides.grad is not None and torch.isfinite(m.strides.grad).all() for _, m in layers)
    model.eval()
    with torch.no_grad():
        before = model(x)
    frozen = diffstride.freeze(model, inplace=True)
    with torch.no_grad():
        assert torch.allclose(frozen(x), before, atol=1e-5)
    sub, _ = diffstride.convert(original, pooling_cls=pooling.SpatialPooling, example_input=x)
    with torch.no_grad():
        ours, theirs = sub(x), original(x)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_inception_branches_that_meet_after_valid_convolutions_share_one_pooling():
    """torchvision's Inception v3: 'valid' strided convolutions and a functional max pooling
    (``F.max_pool2d(x, 3, stride=2)`` in the block's forward) concatenated. The functional pooling
    becomes a module of its block (a GraphModule with the same parameters), the three branches
    share one pooling instance, and each 'valid' layer gets 'same' padding at the end of each axis:
    the branches had equal sizes in the original, and keep them at any strides."""
    torch.manual_seed(0)
    original = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    x = torch.randn(1, 3, 96, 96)
    model, changes = diffstride.convert(original, example_input=x)
    shared = {c.name: c.pooling for c in changes if c.name.startswith("Mixed_6a")}
    assert shared == dict.fromkeys(["Mixed_6a.branch3x3.conv", "Mixed_6a.branch3x3dbl_3.conv",
                                    "Mixed_6a.functional_pool0"], "Mixed_6a.branch3x3.conv.1")
    assert isinstance(model.Mixed_6a.functional_pool0[2], pooling.DiffStride)  # pad, stride-1 max pool, pooling
    assert set(model.state_dict()) >= {k for k in original.state_dict()} - {
        k for k in original.state_dict() if any(k.startswith(c.name + ".") for c in changes)}
    model.train()
    _move_strides(model, random.Random(1))
    out = model(torch.randn(2, 3, 96, 96))
    (out.logsumexp(-1).mean() + diffstride.complexity_loss(model)).backward()
    assert all(torch.isfinite(m.strides.grad).all() for _, m in pooling.pooling_layers(model))
    # stride-1 + subsampling: the branches of Mixed_6a now keep their input size before subsampling,
    # so the converted network differs from the original by design; the unconverted blocks are untouched
    assert type(model.Mixed_5b) is type(original.Mixed_5b)


class _TwoResolutions(nn.Module):
    """An HRNet-style exchange: a high- and a low-resolution branch, each fused into the other
    (a strided convolution down, a fixed ``scale_factor`` upsampling up)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.low = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(16, 8, 1), nn.Upsample(scale_factor=2, mode="nearest"))
        self.fuse_down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(24, 2)

    def forward(self, x):
        high = torch.relu(self.stem(x))
        low = torch.relu(self.low(self.down(high)))
        high, low = high + self.up(low), low + self.fuse_down(high)
        pooled = [torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1) for t in (high, low)]
        return self.head(torch.cat(pooled, 1))


def test_fixed_factor_upsampling_that_meets_another_branch_follows_its_size():
    """The upsampling by 2 is rewritten to the size of the tensor it is added to: at a learned
    stride of 2.3 the low branch is no longer half the high one, and a fixed factor would break."""
    from diffstride.convert import ResizeLike

    torch.manual_seed(0)
    original = _TwoResolutions().eval()
    x = torch.randn(1, 3, 32, 32)
    model, changes = diffstride.convert(original, example_input=x)
    assert {c.name: c.pooling for c in changes} == {"down": "down.1", "fuse_down": "down.1"}
    assert sum(isinstance(m, ResizeLike) for m in model.modules()) == 1
    for seed in range(3):  # at any strides the branches meet
        _move_strides(model, random.Random(seed))
        assert all(m.strides.tolist() != [2.0, 2.0] for _, m in pooling.pooling_layers(model))
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    # with plain subsampling at the initial strides, the converted network is the original function
    sub, _ = diffstride.convert(original, pooling_cls=pooling.SpatialPooling, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), original(x), rtol=1e-5, atol=1e-6)
