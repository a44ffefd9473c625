"""The Pre-Act ResNets against the reference's semantics (google-research/diffstride's resnet.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffstride import pooling, resnet


def _pooling_outputs(model, x):
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.append((n, tuple(o.shape[2:]))))
             for n, m in pooling.pooling_layers(model)]
    model(x)
    for h in hooks:
        h.remove()
    return sizes


def test_resnet18_diffstride_feature_maps_on_cifar():
    model = resnet.resnet18(num_output_classes=10, pooling_cls=pooling.DiffStride)
    sizes = _pooling_outputs(model, torch.randn(2, 3, 32, 32))
    # stem (stride 1 clamped to 32/28), then stages 2, 3, 4: each pooling runs twice (main + shortcut)
    assert [s for _, s in sizes] == [(32, 32), (24, 24), (24, 24), (20, 20), (20, 20), (18, 18), (18, 18)]


def test_one_pooling_instance_shared_by_main_branch_and_shortcut():
    model = resnet.resnet18(num_output_classes=10, pooling_cls=pooling.DiffStride)
    layer = model.blocks[1][0]
    assert layer.shortcut_conv is not None and isinstance(layer.pooling, pooling.DiffStride)
    calls = []
    layer.pooling.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 2
    strides = [n for n, _ in model.named_parameters() if n.endswith("strides")]
    assert strides == ["stem_pooling.strides", "blocks.1.0.pooling.strides", "blocks.2.0.pooling.strides",
                       "blocks.3.0.pooling.strides"]


def test_id_only_first_block_never_projects_and_never_strides():
    model = resnet.resnet18(num_output_classes=10, pooling_cls=pooling.DiffStride)
    for layer in model.blocks[0]:
        assert layer.shortcut_conv is None and layer.pooling is None
    assert all(layer.shortcut_conv is None for block in model.blocks for layer in list(block)[1:])
    r56 = resnet.resnet56(num_output_classes=10)
    assert [len(b) for b in r56.blocks] == [9, 9, 9]
    assert r56.blocks[0][0].shortcut_conv is not None  # resnet56 has no id_only


def test_strided_convolutions_without_pooling():
    model = resnet.resnet18(num_output_classes=10, strides=[1, 1, 2, 2, 2])
    assert not pooling.pooling_layers(model)
    shapes = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    model = resnet.resnet18(num_output_classes=10, strides="1, 1, 3, 2, 3")
    shapes.clear()
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:])))
    model(torch.randn(1, 3, 32, 32))
    assert shapes == [(32, 32), (11, 11), (6, 6), (2, 2)]  # TF 'same': ceil(size / stride)


def test_tf_same_padding_puts_the_extra_row_at_the_bottom():
    conv = resnet.Conv2dSame(2, 3, 3, stride=2, bias=False)
    x = torch.randn(1, 2, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1), atol=1e-3)
    conv1 = resnet.Conv2dSame(2, 3, 3, stride=1, bias=False)
    assert torch.allclose(conv1(x), F.conv2d(x, conv1.weight, padding=1), atol=1e-6)


@pytest.mark.parametrize("strides", ["1, 1, 3, 2, 3", "[1, 1, 3, 2, 3]", [1, 1, 3, 2, 3]])
def test_strides_as_list_or_string(strides):
    model = resnet.resnet18(num_output_classes=10, strides=strides, pooling_cls=pooling.DiffStride)
    got = [m.strides.tolist() for _, m in pooling.pooling_layers(model)]
    assert got == [[1.0, 1.0], [3.0, 3.0], [2.0, 2.0], [3.0, 3.0]]


def test_fractional_strides_with_diffstride():
    model = resnet.resnet18(num_output_classes=10, strides="1, 1, 2.5, 2, 2", pooling_cls=pooling.DiffStride)
    assert model.blocks[1][0].pooling.strides.tolist() == [2.5, 2.5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strides": [1, 1, 2, 2]}, r"number of filters \(5\) must match the number of strides \(4\)"),
        ({"strides": "1, 1, x, 2, 2"}, "strides must be numbers separated by commas"),
        ({"strides": [1, 1, 0.5, 2, 2]}, r"strides\[2\] must be finite numbers >= 1, but got 0.5"),
        ({"strides": [1, 1, 2.5, 2, 2]}, r"need whole-number strides, but got \(2.5, 2.5\)"),
        ({"output_activation": "tanh"}, r"output_activation must be None, 'linear' \(logits\) or 'softmax'"),
    ],
)
def test_bad_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet.resnet18(num_output_classes=10, **kwargs)


def test_keras_initialisation_and_batch_norm():
    torch.manual_seed(0)
    model = resnet.resnet18(num_output_classes=10)
    w = model.blocks[3][0].unstrided_conv.weight  # 512 x 512 x 3 x 3
    fan_in = w[0].numel()
    assert abs(w.std().item() / math.sqrt(2 / fan_in) - 1) < 0.01  # Keras he_normal: std sqrt(2/fan_in)
    assert w.abs().max().item() <= 2 * math.sqrt(2 / fan_in) / 0.8796 + 1e-6  # truncated at 2 sigma
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(0.1) and m.eps == 1e-5 for m in bns)
    assert torch.equal(model.fc.bias, torch.zeros(10))


def test_softmax_output_activation():
    model = resnet.resnet18(num_output_classes=10, output_activation="softmax").eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert torch.allclose(out.sum(-1), torch.ones(3), atol=1e-5) and (out >= 0).all()


def test_weight_decay_groups_equal_the_keras_l2_loss_term():
    """SGD with l2_param_groups (weight_decay = 2·wd on conv/dense kernels and dense bias) makes the
    same updates as adding the reference's Keras L2 term wd·Σw² to the loss."""
    torch.manual_seed(1)
    wd = 5e-3
    a = resnet.Resnet([4, 8, 8], [1, 2, 2], num_output_classes=3, pooling_cls=pooling.DiffStride, num_layers=1,
                      kernel_size=3, weight_decay=wd)
    b = resnet.Resnet([4, 8, 8], [1, 2, 2], num_output_classes=3, pooling_cls=pooling.DiffStride, num_layers=1,
                      kernel_size=3, weight_decay=wd)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(resnet.l2_param_groups(b), lr=0.1, momentum=0.9)
    regularised = [p for m in a.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters()]
    assert any(p.dim() == 1 for p in regularised)  # the dense bias is regularised, as in Keras
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        loss_a = F.cross_entropy(a(x), y) + wd * sum((p ** 2).sum() for p in regularised)
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        opt_b.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_channels_last_model_gives_the_same_output():
    model = resnet.resnet18(num_output_classes=10, pooling_cls=pooling.DiffStride).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4)


def test_an_identity_layer_adds_its_branch_to_the_raw_input():
    """Pre-activation: with the last convolution zeroed, a layer returns its input unchanged,
    negative values included (a post-activation layer would apply ReLU after the sum)."""
    layer = resnet.ResidualLayer(4, 4)
    nn.init.zeros_(layer.unstrided_conv.weight)
    x = torch.randn(2, 4, 8, 8)
    assert (x < 0).any() and torch.equal(layer(x), x)


def test_projecting_shortcut_is_the_1x1_conv_then_the_shared_pooling_without_batch_norm():
    layer = resnet.ResidualLayer(4, 6, strides=2, pooling_cls=pooling.DiffStride, project=True)
    nn.init.zeros_(layer.unstrided_conv.weight)
    x = torch.randn(2, 4, 16, 16)
    assert torch.allclose(layer(x), layer.pooling(layer.shortcut_conv(x)), atol=1e-6)
    assert [n for n, m in layer.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["bn1", "bn2"]
    assert layer.bn1.num_features == 4 and layer.bn2.num_features == 6  # bn1 normalises the layer's input


def test_head_is_batch_norm_relu_average_dense():
    model = resnet.Resnet([4, 8], [1, 2], num_output_classes=3, num_layers=1, in_channels=1).eval()
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        features = model.blocks(model.stem_conv(x))
        expected = model.fc(F.relu(model.head_bn(features)).mean(dim=(2, 3)))
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_one_dimensional_resnet_shares_the_pooling_and_downsamples_sequences():
    model = resnet.Resnet([8, 16, 32], [2, 2, 2], num_output_classes=5, pooling_cls=pooling.DiffStride1d,
                          num_layers=1, in_channels=3, dims=1)
    sizes = _pooling_outputs(model, torch.randn(2, 3, 400))
    expected, n = [], 400
    for layer in [model.stem_pooling, model.blocks[0][0].pooling, model.blocks[1][0].pooling]:
        n = layer.output_size(n)[0]
        expected += [n] if layer is model.stem_pooling else [n, n]  # main branch and shortcut
    assert [s for _, s in sizes] == [(n,) for n in expected]
    assert all(isinstance(m, (nn.Conv1d, nn.BatchNorm1d)) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)))
    out = model(torch.randn(2, 3, 400))
    out.sum().backward()
    assert out.shape == (2, 5) and all(layer.strides.grad is not None for _, layer in pooling.pooling_layers(model))
    strided = resnet.Resnet([8, 16], [1, 3], num_output_classes=5, num_layers=1, in_channels=3, dims=1)
    strided.blocks.register_forward_hook(lambda m, i, o: sizes.append(o.shape))
    strided(torch.randn(2, 3, 100))
    assert sizes[-1] == (2, 16, 34)  # TF 'same': ceil(100 / 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"dims": 1, "pooling_cls": pooling.DiffStride}, r"'DiffStride' is a 2-D layer, but the network is 1-D; use the 1-D layer"),
    ({"dims": 2, "pooling_cls": pooling.DiffStride1d}, r"'DiffStride1d' is a 1-D layer, but the network is 2-D"),
    ({"dims": 3}, r"dims must be 1 \(inputs \(N, C, L\)\) or 2"),
    ({"dims": 1, "strides": [1, (2, 2)]}, r"strides\[1\] must be a number, one per spatial axis, but got \(2, 2\)"),
])
def test_dimension_errors(kwargs, match):
    kwargs = {"strides": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=match):
        resnet.Resnet([4, 8], num_output_classes=3, num_layers=1, **kwargs)


def test_a_1d_model_refuses_an_image():
    model = resnet.Resnet([4, 8], [1, 2], num_output_classes=3, num_layers=1, dims=1)
    with pytest.raises(ValueError, match=r"this 1-D Resnet expects an \(N, C, L\) input, but got shape \(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))
