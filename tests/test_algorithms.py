"""The two forms of the spectral layers (matrix products and torch.fft), the automatic choice
between them, and the FFT form under autocast, channels_last, compile and ONNX export.

Values against the float64 FFT oracle (tests/oracle.py) with stated tolerances; the golden
reference cases and gradcheck for both forms are in test_golden.py and test_oracle.py."""
import pytest
import torch

import diffstride
from diffstride import _fft_form, _masks, settings
from diffstride import functional as F
from diffstride import pooling

from .conftest import onnxruntime_outputs
from .oracle import diffstride_fft, diffstride_fft_3d, fixed_spectral_fft


def _choice(shape, strides=2.0):
    layer = {3: pooling.DiffStride1d, 4: pooling.DiffStride, 5: pooling.DiffStride3d}[len(shape)](strides=strides)
    x = torch.empty(shape)
    plan = layer._plan(tuple(shape[2:]), F.stride_values(layer.strides))
    return F.choose_algorithm(x, plan)


@pytest.mark.parametrize("shape, expected", [
    ((32, 64, 32, 32), "fft"),        # ResNet-18 on CIFAR: the blocked FFT form wins at sides of powers of two
    ((32, 256, 16, 16), "fft"),
    ((32, 64, 24, 24), "matmul"),     # ... and from 28x28 at other sizes (the matrix form at 20x20, 24x24)
    ((32, 64, 20, 20), "matmul"),
    ((32, 64, 28, 28), "fft"),
    ((32, 512, 8, 8), "matmul"),      # at most 64 pixels: one Kronecker GEMM
    ((64, 64, 64), "matmul"),         # short 1-D signals: one GEMM
    ((8, 64, 56, 56), "fft"),
    ((2, 3, 512, 512), "fft"),        # large images
    ((4, 1, 16000), "fft"),           # one second of 16 kHz audio
    ((8, 32, 4000), "fft"),
    ((1, 1, 200), "fft"),             # operators larger than the input itself
    ((2, 3, 8, 16, 16), "fft"),       # 3-D has only the FFT form
])
def test_auto_choice_at_clear_sizes(shape, expected):
    assert _choice(shape) == expected


def test_forced_algorithm_is_kept_and_bad_names_are_refused():
    x = torch.empty(1, 1, 16000)
    plan = F.diffstride_plan((16000,), (2.0,))
    assert F.choose_algorithm(x, plan, "matmul") == "matmul"
    with pytest.raises(ValueError, match=r"algorithm must be one of \('auto', 'matmul', 'fft'\), but got 'FFT'"):
        F.choose_algorithm(x, plan, "FFT")
    with pytest.raises(ValueError, match=r"algorithm='matmul' is not available for 3-D layers"):
        pooling.FixedSpectralPooling3d(strides=2, algorithm="matmul")
    with pytest.raises(ValueError, match=r"algorithm='matmul' is not available for 3-D inputs"):
        F.diff_stride3d(torch.randn(1, 1, 8, 8, 8), torch.tensor([2.0, 2.0, 2.0]), algorithm="matmul")


def test_a_million_samples_forward_and_backward():
    """1-D, B=1, C=1, L=1,000,000: the matrix form's operator alone would be 2 x 500k x 1M floats
    (4 TB); 'auto' takes the FFT form and the whole step stays linear in the length."""
    layer = pooling.DiffStride1d(strides=2.0)
    x = torch.randn(1, 1, 1_000_000, requires_grad=True)
    y = layer(x)
    y.square().mean().backward()
    assert y.shape == (1, 1, 500_008) and x.grad.shape == x.shape and layer.strides.grad is not None
    # the same values as the oracle on a slice of the problem size (float64 oracle, float32 layer)
    small = torch.randn(2, 3, 20_000)
    ref = diffstride_fft(small.double(), torch.tensor([2.0], dtype=torch.float32).double())
    assert ((layer(small).double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


# the FFT form's two backward paths: its own (explicit), and autograd's for small inputs
BACKWARDS = pytest.mark.parametrize("autograd_max", [0, 1 << 40], ids=["explicit-backward", "autograd-backward"])


@BACKWARDS
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_fft_form_under_autocast_runs_in_float32_and_returns_the_autocast_dtype(dtype, tol, autograd_max):
    layer = pooling.DiffStride(strides=(2.0, 3.0), algorithm="fft")
    x = torch.randn(2, 3, 40, 36)
    with torch.autocast("cpu", dtype=dtype), settings.override(cpu_compact_max_bytes=autograd_max):
        y = layer(x)
    ref = diffstride_fft(x.double(), torch.tensor([2.0, 3.0]).double())
    assert y.dtype == dtype
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < tol


@pytest.mark.parametrize("cls, shape, fmt", [
    (pooling.DiffStride, (2, 3, 40, 36), torch.channels_last),
    (pooling.FixedSpectralPooling, (2, 3, 40, 36), torch.channels_last),
    (pooling.DiffStride3d, (2, 3, 10, 12, 14), torch.channels_last_3d),
])
@BACKWARDS
def test_fft_form_keeps_channels_last(cls, shape, fmt, autograd_max):
    kwargs = {"algorithm": "fft"}
    layer = cls(strides=2.0, **kwargs)
    x = torch.randn(shape)
    y_ref = layer(x)
    with settings.override(cpu_compact_max_bytes=autograd_max):
        y = layer(x.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt) and torch.allclose(y, y_ref, atol=1e-5)


def test_fft_form_compiles_with_the_same_values_and_gradients():
    torch._dynamo.reset()
    layer = pooling.DiffStride(strides=(2.2, 1.7), algorithm="fft")
    x = torch.randn(2, 3, 48, 40, requires_grad=True)
    eager = layer(x)
    (eager * eager).sum().backward()
    g_x, g_s = x.grad.clone(), layer.strides.grad.clone()
    x.grad = layer.strides.grad = None
    compiled = torch.compile(layer, backend="aot_eager")(x)
    (compiled * compiled).sum().backward()
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert torch.allclose(x.grad, g_x, atol=1e-4) and torch.allclose(layer.strides.grad, g_s, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_frozen_fft_form_exports_to_onnx():
    """A frozen layer exports with either form: the FFT form becomes ONNX DFT ops. onnxruntime's
    DFT is less accurate than torch's (measured relative 7e-5 at L=500, 5e-4 at L=4,000)."""
    model = diffstride.freeze(torch.nn.Sequential(pooling.DiffStride1d(strides=2.0, algorithm="fft"))).eval()
    x = torch.randn(1, 2, 500)
    ref = model(x)
    out = onnxruntime_outputs(model, x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-3


def test_large_operators_are_built_by_fft_and_match_the_direct_build():
    """Above settings.direct_operator_max the operator comes from an inverse FFT (no cubic inner product);
    it equals the direct products' operator."""
    weights = torch.rand(130, dtype=torch.float64)
    n_in, n_out = 700, 258
    assert 130 * n_out * n_in > settings.current().direct_operator_max
    fast = _masks.spectral_operator(n_in, n_out, range(130), weights, torch.float64)
    small = _masks.spectral_operator(n_in // 7, n_out // 2, range(60), weights[:60], torch.float64)  # direct
    # direct formula, written out, for both
    for (real, imag), (nin, nout, k) in ((fast, (n_in, n_out, 130)), (small, (n_in // 7, n_out // 2, 60))):
        p = torch.arange(nout, dtype=torch.float64)[:, None, None]
        m = torch.arange(nin, dtype=torch.float64)[None, :, None]
        kk = torch.arange(k, dtype=torch.float64)[None, None, :]
        angle = 2 * torch.pi * (kk * p / nout - kk * m / nin)
        expected_r = (weights[:k] * torch.cos(angle)).sum(-1)
        expected_i = (weights[:k] * torch.sin(angle)).sum(-1)
        assert torch.allclose(real, expected_r, atol=1e-9) and torch.allclose(imag, expected_i, atol=1e-9)


def test_3d_layer_compiles_and_trains_in_a_network():
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), pooling.DiffStride3d(strides=(1.5, 2.0, 2.0)),
                              torch.nn.BatchNorm3d(4))
    x = torch.randn(2, 2, 10, 16, 16)
    eager = net(x)
    compiled = torch.compile(net, backend="aot_eager")(x)
    assert torch.allclose(compiled, eager, atol=1e-5)
    compiled.square().mean().backward()
    assert net[1].strides.grad is not None and torch.isfinite(net[1].strides.grad).all()


@pytest.mark.parametrize("cls, shape, strides, fmt", [
    (pooling.DiffStride, (3, 4, 40, 36), (4.0, 3.0), torch.contiguous_format),  # small kept spectrum: saved
    (pooling.DiffStride, (3, 4, 40, 36), (1.0, 1.2), torch.contiguous_format),  # large: recomputed
    (pooling.DiffStride, (3, 4, 40, 36), (1.0, 2.5), torch.channels_last),      # blocks along the batch
    (pooling.DiffStride1d, (5, 3, 301), (4.0,), torch.contiguous_format),
    (pooling.DiffStride1d, (5, 3, 301), (1.0,), torch.contiguous_format),
    (pooling.DiffStride3d, (3, 2, 10, 12, 14), (1.0, 2.0, 3.0), torch.channels_last_3d),
    (pooling.DiffStride3d, (3, 2, 10, 12, 14), (3.0, 2.0, 4.0), torch.contiguous_format),
])
@pytest.mark.parametrize("blocks", ["one", "several", "autograd"])
def test_fft_form_backward_matches_autograd_of_the_oracle(cls, shape, strides, fmt, blocks):
    """The FFT form's own backward (in one block, whose inverse is the result itself, or by
    blocks of planes; the kept spectrum saved or recomputed), and the small inputs' path through
    autograd, against autograd through the float64 oracle (tests/oracle.py): gradients of the
    input and the strides."""
    if blocks == "several":  # blocks of one plane (along the batch for channels_last)
        blocking = settings.override(fft_block_min_bytes=0, fft_planes_per_thread=0, fft_block_fraction=1 << 20,
                                     cpu_compact_max_bytes=0)
    elif blocks == "one":
        blocking = settings.override(fft_block_min_bytes=1 << 40, cpu_compact_max_bytes=0)
    else:
        blocking = settings.override(cpu_compact_max_bytes=1 << 40)
    torch.manual_seed(0)
    layer = cls(strides=strides if len(strides) > 1 else strides[0], algorithm="fft", dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    with blocking:
        y = layer(x)
        w = torch.randn(y.shape, dtype=torch.float64)
        (y * w).sum().backward()
    oracle = diffstride_fft_3d if x.dim() == 5 else diffstride_fft
    s = layer.strides.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = oracle(x_ref, s)
    (y_ref * w).sum().backward()
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    assert torch.allclose(x.grad, x_ref.grad, rtol=0, atol=1e-11)
    assert torch.allclose(layer.strides.grad, s.grad, rtol=1e-10, atol=1e-10)


def test_fft_form_backward_of_fixed_pooling_matches_autograd_of_the_oracle():
    x = torch.randn(4, 3, 33, 20, dtype=torch.float64, requires_grad=True)
    layer = pooling.FixedSpectralPooling(strides=(2.0, 3.0), algorithm="fft")
    y = layer(x)
    w = torch.randn(y.shape, dtype=torch.float64)
    (y * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (fixed_spectral_fft(x_ref, (2.0, 3.0)) * w).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls, shape, algorithm", [
    (pooling.DiffStride, (2, 3, 12, 10), "matmul"),
    (pooling.DiffStride, (2, 3, 12, 10), "fft"),
    (pooling.DiffStride1d, (2, 3, 21), "matmul"),
    (pooling.DiffStride3d, (1, 2, 10, 11, 12), "fft"),  # sizes above the clamp floor of 1.7
])
def test_a_gradient_penalty_through_the_compact_form_equals_finite_differences(cls, shape, algorithm):
    """Double backward (the compact form is plain autograd): the penalty ``|d sum(y*w)/dx|^2`` is
    differentiated in the strides and compared with a central difference of it (float64)."""
    torch.manual_seed(0)
    layer = cls(strides=1.7, algorithm=algorithm, dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(layer(x).shape, dtype=torch.float64)

    def penalty(strides):
        y = F.diff_stride_unchecked(x, strides, 4.0, None, None, layer._plan(shape[2:], (1.7,)), algorithm)
        (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        return g.square().sum()

    s = layer.strides.detach().clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(penalty(s), s)
    eps, direction = 1e-6, torch.linspace(1.0, 0.5, s.numel(), dtype=torch.float64)
    numeric = (penalty(s.detach() + eps * direction) - penalty(s.detach() - eps * direction)) / (2 * eps)
    assert analytic.abs().max().item() > 1e-3  # the penalty does depend on the strides
    assert torch.allclose((analytic * direction).sum(), numeric, rtol=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(penalty, (s,))


@pytest.mark.parametrize("shape, algorithm", [((2, 3, 40, 36), "matmul"), ((2, 3, 40, 36), "fft")])
def test_second_derivatives_through_the_blocked_cpu_kernels_are_refused_not_wrong(shape, algorithm):
    """The CPU's cache-blocked kernels have explicit backwards that are not themselves
    differentiable: a second derivative raises instead of returning a wrong value."""
    layer = pooling.DiffStride(strides=2.0, algorithm=algorithm)
    x = torch.randn(shape, requires_grad=True)
    with settings.override(cpu_compact_max_bytes=0):
        (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        g.sum().backward()


def test_settings_steer_the_choice_and_blocks_and_refuse_bad_values():
    x = torch.rand(8, 4, 48, 48)
    layer = pooling.DiffStride(strides=2.0)
    plan = layer._plan((48, 48), F.stride_values(layer.strides))
    assert F.choose_algorithm(x, plan) == "fft"  # cost ratio above the 2-D weight
    with settings.override(fft_cost_weight_2d=1e6):
        assert F.choose_algorithm(x, plan) == "matmul"
        with settings.override(kronecker_max_pixels=0, fft_cost_weight_2d=0.0):  # nested blocks stack
            assert F.choose_algorithm(x, plan) == "fft"
        assert settings.current().fft_cost_weight_2d == 1e6
    assert settings.current() == settings.Settings()
    planes = torch.empty(64, 4, 48, 48)
    assert _fft_form.fft_block(planes, 2) < 64
    with settings.override(fft_block_min_bytes=1 << 40):
        assert _fft_form.fft_block(planes, 2) == 64
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['fft_weight'\]"):
        with settings.override(fft_weight=2.0):
            pass
    with pytest.raises(ValueError, match=r"settings.fft_block_fraction must be >= 0, but got -1"):
        settings.override(fft_block_fraction=-1).__enter__()
    with pytest.raises(TypeError, match=r"settings.kronecker_max_pixels must be an integer, but got 6.5"):
        settings.override(kronecker_max_pixels=6.5).__enter__()
    assert settings.current() == settings.Settings()


@pytest.mark.parametrize("make, shape", [
    (lambda algorithm: pooling.DiffStride(strides=(2.0, 3.0), algorithm=algorithm), (2, 3, 20, 18)),
    (lambda algorithm: pooling.DiffStride(strides=2.0, algorithm=algorithm), (2, 3, 6, 6)),  # one Kronecker product
    (lambda algorithm: pooling.DiffStride1d(strides=2.0, algorithm=algorithm), (2, 3, 50)),
    (lambda algorithm: pooling.DiffStride3d(strides=2.0), (1, 2, 8, 10, 12)),
    (lambda algorithm: pooling.FixedSpectralPooling(strides=2.0, algorithm=algorithm), (2, 3, 20, 18)),
])
@pytest.mark.parametrize("algorithm, autograd_max", [("matmul", None), ("fft", 0), ("fft", 1 << 40)])
def test_the_output_can_be_modified_in_place(make, shape, algorithm, autograd_max):
    """``nn.ReLU(inplace=True)`` after the layer (torchvision's ResNets): every form's output can be
    modified in place, with the gradients of the out-of-place ReLU."""
    changes = {} if autograd_max is None else {"cpu_compact_max_bytes": autograd_max}
    grads = []
    for inplace in (False, True):
        torch.manual_seed(0)
        layer = make(algorithm)
        x = torch.randn(shape, requires_grad=True)
        with settings.override(**changes):
            y = layer(x)
            y = torch.relu_(y) if inplace else torch.relu(y)
            (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
