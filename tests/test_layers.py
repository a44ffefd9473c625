"""The layers as users use them: construction, errors, repr, sizes, formats, autocast,
torch.compile, ONNX, state dicts and optimizer groups."""
import math

import pytest
import torch
from torch import nn

from diffstride import functional as F
from diffstride import _matrix_form
from diffstride import pooling

from .conftest import onnxruntime_outputs
from .oracle import diffstride_fft

ALL_2D = [pooling.DiffStride, pooling.FixedSpectralPooling, pooling.SpatialPooling]
ALL_1D = [pooling.DiffStride1d, pooling.FixedSpectralPooling1d, pooling.SpatialPooling1d]


def test_readme_example_shape():
    assert pooling.DiffStride(strides=(2, 4))(torch.rand(1, 3, 64, 64)).shape == (1, 3, 40, 24)


def test_aliases():
    assert pooling.DiffStride2d is pooling.DiffStride
    assert pooling.FixedSpectralPooling2d is pooling.FixedSpectralPooling
    assert pooling.SpatialPooling2d is pooling.SpatialPooling


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strides": (0.5, 2.0)}, r"strides must be finite numbers >= 1, but got \(0.5, 2.0\)"),
        ({"strides": (float("nan"), 2.0)}, "strides must be finite"),
        ({"strides": (float("inf"), 2.0)}, "strides must be finite"),
        ({"strides": (2.0, 2.0, 2.0)}, r"strides must be a number or 2 numbers, one per spatial axis, but got \(2.0, 2.0, 2.0\)"),
        ({"strides": "two"}, "strides must be a number or a sequence"),
        ({"smoothness_factor": -1.0}, r"smoothness_factor must be finite and >= 0, but got -1.0"),
        ({"smoothness_factor": 0.0}, "smoothness_factor must be > 0"),
        ({"strides": (2.0, 3.0), "shared_stride": True}, r"shared_stride=True needs equal strides, but got \(2.0, 3.0\)"),
        ({"lower_limit_stride": 0.5}, "lower_limit_stride must be None or a finite number >= 1, but got 0.5"),
        ({"lower_limit_stride": 3.0, "upper_limit_stride": 2.0}, r"lower_limit_stride \(3.0\) must not exceed"),
        ({"data_format": "NCHW"}, "data_format must be one of"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pooling.DiffStride(**kwargs)


@pytest.mark.parametrize("cls", ALL_2D + ALL_1D)
def test_baseline_constructor_errors(cls):
    with pytest.raises(ValueError, match="strides must be finite numbers >= 1"):
        cls(strides=0.5)
    with pytest.raises(ValueError, match="data_format must be one of"):
        cls(data_format="nchw")


def test_spatial_pooling_needs_whole_strides():
    with pytest.raises(ValueError, match=r"whole-number strides, but got \(1.5, 2\)"):
        pooling.SpatialPooling(strides=(1.5, 2))


@pytest.mark.parametrize("cls", ALL_2D)
def test_wrong_rank_is_a_clear_error(cls):
    with pytest.raises(ValueError, match=r"expects a 4-D input \(N, C, H, W\), but got shape \(3, 32, 32\)"):
        cls()(torch.rand(3, 32, 32))


@pytest.mark.parametrize("cls", ALL_1D)
def test_wrong_rank_is_a_clear_error_1d(cls):
    with pytest.raises(ValueError, match=r"expects a 3-D input \(N, C, L\), but got shape \(2, 3, 8, 8\)"):
        cls()(torch.rand(2, 3, 8, 8))


def test_non_float_input_is_a_clear_error():
    with pytest.raises(TypeError, match="floating-point input, but got dtype torch.int64"):
        pooling.DiffStride()(torch.ones(1, 1, 8, 8, dtype=torch.long))


@pytest.mark.parametrize("size", [(4, 32), (32, 3), (2, 2)])
def test_input_no_larger_than_smoothness_is_a_clear_error(size):
    layer = pooling.DiffStride(smoothness_factor=4.0)
    with pytest.raises(ValueError, match=r"needs an input (height|width) > smoothness_factor \(4\)"):
        layer(torch.rand((1, 1) + size))
    with pytest.raises(ValueError, match="smoothness_factor"):
        layer.output_size(size)
    with pytest.raises(ValueError, match=r"needs an input length > smoothness_factor \(4\)"):
        pooling.DiffStride1d()(torch.rand(1, 1, 4))


def test_fixed_spectral_pooling_too_small_input():
    with pytest.raises(ValueError, match=r"spatial sizes >= 2, but got \(1, 8\)"):
        pooling.FixedSpectralPooling()(torch.rand(1, 1, 1, 8))


_S2 = torch.tensor([2.0, 2.0])


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.diff_stride2d(torch.rand(3, 32, 32), _S2), ValueError,
     r"diff_stride2d expects a 4-D input \(N, C, H, W\), but got shape \(3, 32, 32\)"),
    (lambda: F.diff_stride1d(torch.ones(1, 1, 8, dtype=torch.long), torch.tensor([2.0])), TypeError,
     "diff_stride1d expects a floating-point input, but got dtype torch.int64"),
    (lambda: F.diff_stride2d(torch.rand(1, 1, 8, 8), (2.0, 2.0)), TypeError,
     "diff_stride2d expects strides as a torch.Tensor .* but got tuple"),
    (lambda: F.diff_stride2d(torch.rand(1, 1, 8, 8), torch.tensor([2.0, 2.0, 2.0])), ValueError,
     r"strides tensor of shape \(1,\) or \(2,\), but got shape \(3,\)"),
    (lambda: F.diff_stride3d(torch.rand(1, 1, 8, 8, 8), torch.tensor([2, 2, 2])), ValueError,
     r"floating-point strides tensor .* dtype torch.int64"),
    (lambda: F.diff_stride2d(torch.rand(1, 1, 4, 32), _S2), ValueError,
     r"diff_stride2d needs an input height > smoothness_factor \(4\) and >= 2, but got height 4"),
    (lambda: F.diff_stride3d(torch.rand(1, 1, 8, 8, 3), torch.tensor([2.0])), ValueError,
     r"diff_stride3d needs an input width > smoothness_factor \(4\)"),
    (lambda: F.diff_stride2d(torch.rand(1, 1, 8, 8), _S2, smoothness_factor=0.0), ValueError,
     "smoothness_factor must be > 0"),
    (lambda: F.diff_stride2d(torch.rand(1, 1, 8, 8), _S2, lower_limit_stride=0.5), ValueError,
     "lower_limit_stride must be None or a finite number >= 1, but got 0.5"),
    (lambda: F.diff_stride1d(torch.rand(1, 1, 64), torch.tensor([2.0]), algorithm="FFT"), ValueError,
     r"algorithm must be one of \('auto', 'matmul', 'fft'\), but got 'FFT'"),
    (lambda: F.diff_stride2d(torch.rand(1, 1, 8, 8), torch.tensor([float("nan"), 2.0])), FloatingPointError,
     r"diff_stride2d strides are not finite: \(nan, 2.0\)"),
    (lambda: F.fixed_spectral_pool2d(torch.rand(1, 1, 1, 8), (2, 2)), ValueError,
     r"fixed_spectral_pool2d needs spatial sizes >= 2, but got \(1, 8\)"),
    (lambda: F.fixed_spectral_pool1d(torch.rand(1, 1, 8), 0.5), ValueError,
     r"strides must be finite numbers >= 1, but got 0.5"),
    (lambda: F.fixed_spectral_pool3d(torch.rand(1, 8, 8, 8), 2), ValueError,
     r"fixed_spectral_pool3d expects a 5-D input \(N, C, D, H, W\), but got shape \(1, 8, 8, 8\)"),
])
def test_functional_ops_check_their_input(call, error, match):
    """The functional ops validate as the layers do (torchvision's ops' habit), naming the op."""
    with pytest.raises(error, match=match):
        call()


def test_layers_are_siblings_over_one_base():
    """1-D, 2-D and 3-D layers of a kind are siblings (no 1-D layer is a 2-D one), all PoolingLayers."""
    families = [(pooling.DiffStride1d, pooling.DiffStride, pooling.DiffStride3d),
                (pooling.FixedSpectralPooling1d, pooling.FixedSpectralPooling, pooling.FixedSpectralPooling3d),
                (pooling.SpatialPooling1d, pooling.SpatialPooling, pooling.SpatialPooling3d)]
    for family in families:
        for cls in family:
            assert issubclass(cls, pooling.PoolingLayer)
            assert [other for other in family if other is not cls and issubclass(cls, other)] == []
            assert cls._ndim == family.index(cls) + 1


def test_parameter_and_state_dict():
    layer = pooling.DiffStride(strides=(2.0, 3.0))
    assert isinstance(layer.strides, nn.Parameter) and layer.strides.shape == (2,)
    assert layer.strides.dtype == torch.float32 and layer.strides.requires_grad
    assert list(layer.state_dict()) == ["strides"]
    shared = pooling.DiffStride(strides=2.5, shared_stride=True)
    assert shared.strides.shape == (1,)
    assert pooling.DiffStride1d(strides=3).strides.shape == (1,)
    frozen = pooling.DiffStride(strides=2, trainable=False)
    assert not frozen.strides.requires_grad
    frozen.load_state_dict({"strides": torch.tensor([3.0, 1.5])})
    assert frozen._known_values == (3.0, 1.5)
    assert frozen.output_size((32, 32)) == pooling.DiffStride(strides=(3.0, 1.5)).output_size((32, 32))


def test_dtype_and_device_arguments():
    layer = pooling.DiffStride(strides=(1.7, 2.3), dtype=torch.float64, device="cpu")
    assert layer.strides.dtype == torch.float64
    assert layer.strides.tolist() == [1.7, 2.3]  # not rounded through float32
    assert layer(torch.rand(1, 2, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_extra_repr_shows_live_strides():
    layer = pooling.DiffStride(strides=(2.0, 2.0))
    assert repr(layer) == "DiffStride(strides=(2, 2), smoothness_factor=4, cropping=True)"
    with torch.no_grad():
        layer.strides.copy_(torch.tensor([2.31, 1.87]))
    assert "strides=(2.31, 1.87)" in repr(layer)
    text = repr(pooling.DiffStride(strides=3, shared_stride=True, trainable=False, lower_limit_stride=1.5,
                                   upper_limit_stride=4, data_format="channels_last"))
    for part in ("strides=(3,)", "trainable=False", "shared_stride=True", "lower_limit_stride=1.5",
                 "upper_limit_stride=4", "data_format='channels_last'"):
        assert part in text


def test_in_place_clamp_of_the_reference():
    layer = pooling.DiffStride(strides=(1.0, 1.0), smoothness_factor=4.0)
    layer(torch.rand(1, 1, 32, 20))
    expected = torch.tensor([32 / 28, 20 / 16], dtype=torch.float32)
    assert torch.equal(layer.strides.detach(), expected)
    assert "1.14" in repr(layer)


@pytest.mark.parametrize("cls", [pooling.DiffStride, pooling.FixedSpectralPooling, pooling.SpatialPooling])
@pytest.mark.parametrize("size", [(32, 32), (31, 17), (9, 64), (7, 7)])
@pytest.mark.parametrize("strides", [(2, 2), (3, 1), (1, 4)])
def test_output_size_predicts_the_output_without_running(cls, size, strides):
    layer = cls(strides=strides)
    before = [p.detach().clone() for p in layer.parameters()]
    predicted = layer.output_size(size)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))  # not modified
    assert layer(torch.rand((1, 2) + size)).shape[2:] == predicted


def test_output_size_1d():
    for cls in ALL_1D:
        layer = cls(strides=3)
        assert layer(torch.rand(1, 2, 101)).shape[2:] == layer.output_size(101) == layer.output_size((101,))


def test_output_size_formula_for_documented_examples():
    assert pooling.DiffStride(strides=2).output_size((32, 32)) == (24, 24)
    assert pooling.DiffStride(strides=(2, 4)).output_size((64, 64)) == (40, 24)
    assert pooling.DiffStride(strides=2, cropping=False).output_size((31, 31)) == (31, 30)


def _grads(layer, x):
    x = x.detach().requires_grad_(True)
    y = layer(x)
    torch.manual_seed(3)
    w = torch.randn(y.shape)
    (y * w).sum().backward()
    return y, x.grad, layer.strides.grad.clone() if isinstance(layer.strides, torch.Tensor) else None


@pytest.mark.parametrize("cls", [pooling.DiffStride, pooling.FixedSpectralPooling])
@pytest.mark.parametrize("size", [(32, 32), (8, 8), (31, 17)])
def test_channels_last_memory_format_same_result_and_format_kept(cls, size):
    x = torch.randn((3, 5) + size)
    y, gx, gs = _grads(cls(strides=(2, 3)), x)
    y_cl, gx_cl, gs_cl = _grads(cls(strides=(2, 3)), x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert gx_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, y_cl, atol=1e-5) and torch.allclose(gx, gx_cl, atol=1e-5)
    if gs is not None:
        assert torch.allclose(gs, gs_cl, rtol=1e-4)


def test_non_contiguous_input():
    x = torch.randn(2, 3, 40, 33)[:, :, 3:35, :32]
    y = pooling.DiffStride(strides=2)(x)
    assert torch.allclose(y, pooling.DiffStride(strides=2)(x.contiguous()))


@pytest.mark.parametrize("cls", ALL_2D)
def test_data_format_channels_last_is_the_permuted_layer(cls):
    x = torch.randn(2, 3, 24, 20)
    y = cls(strides=(2, 2))(x)
    y_last = cls(strides=(2, 2), data_format="channels_last")(x.permute(0, 2, 3, 1))
    assert torch.allclose(y_last, y.permute(0, 2, 3, 1), atol=1e-6)


def test_data_format_channels_last_1d():
    x = torch.randn(2, 3, 50)
    y = pooling.DiffStride1d(strides=2)(x)
    assert torch.allclose(pooling.DiffStride1d(strides=2, data_format="channels_last")(x.transpose(1, 2)), y.transpose(1, 2))


def test_large_batch_crosses_cpu_blocks():
    """Several blocks of samples (CPU cache blocking) give the same values and gradients as one."""
    x = torch.randn(40, 64, 32, 32)
    assert _matrix_form.batch_block(x, 32 * 32) < 40 and _matrix_form.batch_block(x[:8], 32 * 32) == 8

    def grads(part, weight):
        part = part.detach().requires_grad_(True)
        layer = pooling.DiffStride(strides=(2.0, 2.0))
        y = layer(part)
        (y * weight).sum().backward()
        return y, part.grad, layer.strides.grad

    weight = torch.randn((40, 64) + pooling.DiffStride(strides=(2.0, 2.0)).output_size((32, 32)))
    y, gx, gs = grads(x, weight)
    # the same batch in slices of 8 images, each within one block
    parts = [grads(x[i:i + 8], weight[i:i + 8]) for i in range(0, 40, 8)]
    y1, gx1 = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    gs1 = sum(p[2] for p in parts)
    assert torch.allclose(y, y1, atol=1e-5) and torch.allclose(gx, gx1, atol=1e-5)
    assert torch.allclose(gs, gs1, rtol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("size", [(32, 32), (8, 8)])
def test_autocast_low_precision(dtype, tol, size):
    """Under autocast the products run in bf16/fp16 (operators built in float32): documented
    accuracy max|err| / max|ref| < 2e-2 (bf16) and 2e-3 (fp16) against float64."""
    x = torch.randn((4, 8) + size)
    layer = pooling.DiffStride(strides=(2.0, 2.0))
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert layer.strides.grad is not None and torch.isfinite(layer.strides.grad).all()
    ref = diffstride_fft(x.double(), torch.tensor([2.0, 2.0], dtype=torch.float64))
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < tol


def test_the_gradient_reaching_strides_through_a_network_is_the_central_difference():
    """Through a convolution before and a linear layer after: the strides' gradient is the
    central difference of the loss (float64; steps that keep the output size)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pooling.DiffStride(strides=(2.3, 1.7)), nn.Flatten(),
                        nn.LazyLinear(2)).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    loss = lambda: net(x).square().mean()  # noqa: E731
    loss().backward()
    grad, strides = net[1].strides.grad.clone(), net[1].strides
    assert grad.abs().min() > 0
    h = 1e-6
    for i in range(2):
        with torch.no_grad():
            strides[i] += h
            up = loss().item()
            strides[i] -= 2 * h
            down = loss().item()
            strides[i] += h
        assert grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def test_frozen_strides_get_no_gradient_and_stay():
    layer = pooling.DiffStride(strides=(2.0, 3.0), trainable=False)
    x = torch.randn(1, 2, 16, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.strides.grad is None and x.grad is not None
    assert layer.strides.tolist() == [2.0, 3.0]


def test_param_groups_exclude_strides_norms_and_biases():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), pooling.DiffStride(), nn.Flatten(),
                        nn.Linear(4, 2))
    decay, no_decay = pooling.param_groups(net, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(net[0].weight), id(net[4].weight)}
    assert ids(no_decay["params"]) == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].strides), id(net[4].bias)}
    # a custom rule that decays everything: the biases follow it, the strides never do
    decay, _ = pooling.param_groups(net, 1e-3, decay=lambda m, n, p: True)
    assert id(net[2].strides) not in ids(decay["params"]) and id(net[4].bias) in ids(decay["params"])
    torch.optim.SGD(pooling.param_groups(net, 5e-4), lr=0.1)  # accepted by an optimizer


def test_pooling_layers_lists_each_once():
    shared = pooling.DiffStride()
    net = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared, pooling.FixedSpectralPooling())})
    names = [n for n, _ in pooling.pooling_layers(net)]
    assert names == ["a", "b.1"]


# ------------------------------------------------------------------------------------------
# torch.compile and export


def test_compile_same_results_and_recompiles_only_when_the_size_changes():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    layer = pooling.DiffStride(strides=(2.0, 2.0))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    grad_s = layer.strides.grad.clone()
    eager = pooling.DiffStride(strides=(2.0, 2.0))
    y_e = eager(x)
    assert torch.allclose(y, y_e, atol=1e-6)
    x.grad = None
    y_e.sum().backward()
    assert torch.allclose(grad_s, eager.strides.grad, rtol=1e-5)
    frames = counter.frame_count
    with torch.no_grad():
        layer.strides.add_(0.01)  # same output size: no recompile
    assert compiled(x).shape == (2, 3, 24, 24)
    assert counter.frame_count == frames
    with torch.no_grad():
        layer.strides.add_(1.0)  # new output size: one recompile
    assert compiled(x).shape == (2, 3, 20, 20)
    assert counter.frame_count > frames


def test_frozen_strides_compile_fullgraph():
    torch._dynamo.reset()
    layer = pooling.DiffStride(strides=(2.0, 3.0), trainable=False)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(layer, backend="eager", fullgraph=True, dynamic=False)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)
    fixed = torch.compile(pooling.FixedSpectralPooling(strides=2), backend="eager", fullgraph=True, dynamic=False)
    assert torch.allclose(fixed(x), pooling.FixedSpectralPooling(strides=2)(x), atol=1e-6)


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    torch._dynamo.reset()
    layer = pooling.DiffStride(strides=(2.0, 3.0))
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = torch.compile(layer)(x)
    assert torch.allclose(y, pooling.DiffStride(strides=(2.0, 3.0))(x), atol=1e-5)
    y.sum().backward()
    assert layer.strides.grad is not None


def test_onnx_export_of_frozen_layer_runs_in_onnxruntime():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pooling.DiffStride(strides=(2.0, 3.0), trainable=False)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = onnxruntime_outputs(model, x)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == ref.shape
    assert math.isclose(float(abs(out - ref).max()), 0.0, abs_tol=1e-4)


def test_blocks_only_on_cpu():
    """Cache blocking is a CPU matter: other devices (CUDA) take the whole batch in one block."""
    cpu = torch.empty(40, 64, 32, 32)
    meta = torch.empty(40, 64, 32, 32, device="meta")
    assert _matrix_form.batch_block(cpu, 32 * 32) < 40
    assert _matrix_form.batch_block(meta, 32 * 32) == 40


def test_1d_layer_compiles_and_autocasts():
    torch._dynamo.reset()
    layer = pooling.DiffStride1d(strides=3.0)
    x = torch.randn(2, 4, 100, requires_grad=True)
    y = torch.compile(layer, backend="aot_eager")(x)
    assert torch.allclose(y, pooling.DiffStride1d(strides=3.0)(x), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step_with_a_pooling_layer_shared_by_two_branches(backend):
    """A residual block calls its pooling layer twice per forward; the compiled backward must
    not see the strides modified in place between the two calls."""
    from diffstride import resnet

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = resnet.Resnet([4, 8], [1, 2], num_output_classes=3, pooling_cls=pooling.DiffStride, num_layers=1,
                          kernel_size=3)
    eager = resnet.Resnet([4, 8], [1, 2], num_output_classes=3, pooling_cls=pooling.DiffStride, num_layers=1,
                          kernel_size=3)
    eager.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend=backend)
    compiled(x).sum().backward()
    eager(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-4), name


def test_whole_layer_pickles_with_torch_save(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), pooling.DiffStride(strides=(2.0, 3.0), trainable=False))
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    x = torch.randn(1, 3, 20, 20)
    assert torch.equal(loaded(x), model(x))
    loaded[1].load_state_dict({"strides": torch.tensor([2.5, 2.5])})  # the post-load hook survived pickling
    assert loaded[1]._known_values == (2.5, 2.5)


@pytest.mark.parametrize("layer, ndim, values", [
    (pooling.DiffStride((2.0, 3.0)), 2, (2.0, 3.0)),
    (pooling.DiffStride(2.5, shared_stride=True), 2, (2.5, 2.5)),
    (pooling.DiffStride1d(3.0), 1, (3.0,)),
    (pooling.DiffStride3d((2.0, 1.5, 3.0)), 3, (2.0, 1.5, 3.0)),
    (pooling.FixedSpectralPooling((2.0, 3.0)), 2, (2.0, 3.0)),
    (pooling.FixedSpectralPooling1d(1.5), 1, (1.5,)),
    (pooling.SpatialPooling3d(2), 3, (2.0, 2.0, 2.0)),
])
def test_every_pooling_layer_offers_the_same_surface(layer, ndim, values):
    """ndim, stride_values, stride_product, trainable, output_size and freeze_, whatever the kind."""
    assert isinstance(layer, pooling.PoolingLayer) and layer.ndim == ndim
    assert layer.stride_values() == values
    product = layer.stride_product()
    assert product.item() == pytest.approx(math.prod(values))
    learned = isinstance(layer, (pooling.DiffStride, pooling.DiffStride1d, pooling.DiffStride3d))
    assert layer.trainable == learned
    if learned:  # d(prod)/dS_i = prod / S_i (a shared stride: ndim * S^(ndim-1))
        product.backward()
        expected = [math.prod(values) / v for v in values]
        grad = layer.strides.grad.tolist()
        assert grad == pytest.approx([sum(expected)] if len(grad) == 1 else expected)
    x = torch.randn((2, 3) + (12,) * ndim)
    size = layer.output_size((12,) * ndim)
    with torch.no_grad():
        y = layer(x)
    assert tuple(y.shape[2:]) == tuple(size)
    assert layer.freeze_() is layer and not layer.trainable and not list(layer.parameters())
    with torch.no_grad():
        assert torch.equal(layer(x), y)
