"""The layers as PyTorch operations (the "GPU-first" issue): how many operations a call dispatches
with the settings a GPU uses, torch.func, meta and fake tensors, torch.export, torch.compile with
fullgraph=True (frozen, fixed and synced trainable layers), and CUDA against the CPU in float64
(those run only where CUDA is available).

The counts are taken on the CPU with the compact form forced (``cpu_blocked_kernels=False``: what
every call off the CPU takes); each non-view operation is about one kernel launch on a GPU.
"""
import pytest
import torch
from torch import nn

from diffstride import functional as F
from diffstride import pooling, resnet, settings
from diffstride.profiling import count_operations

from .oracle import diffstride_fft

GPU_SETTINGS = {"cpu_blocked_kernels": False}
MAX_OPERATIONS = 40  # forward + backward of one layer call, at any size


def _layer_call_count(layer, shape):
    x = torch.randn(shape, requires_grad=True)
    inputs = [x] + [p for p in layer.parameters() if p.requires_grad]
    with settings.override(**GPU_SETTINGS):
        g = torch.randn_like(layer(x))  # (also warms the caches of size-only constants)
        counts = count_operations(lambda: torch.autograd.grad(layer(x), inputs, g))
    return sum(counts.values()), counts


FAMILIES = [
    ("DiffStride", lambda a: pooling.DiffStride(strides=(2.0, 2.5), algorithm=a), [(4, 8, 32, 32), (2, 3, 112, 96)]),
    ("DiffStride-shared", lambda a: pooling.DiffStride(strides=2.0, shared_stride=True, algorithm=a),
     [(4, 8, 16, 16), (1, 2, 64, 64)]),
    ("DiffStride-limits", lambda a: pooling.DiffStride(strides=2.0, lower_limit_stride=1.5, upper_limit_stride=3.0,
                                                        algorithm=a), [(4, 8, 16, 16), (1, 2, 64, 64)]),
    ("DiffStride1d", lambda a: pooling.DiffStride1d(strides=3.0, algorithm=a), [(4, 8, 100), (2, 1, 2000)]),
    ("DiffStride3d", lambda a: pooling.DiffStride3d(strides=2.0), [(2, 4, 8, 16, 16), (1, 2, 16, 32, 32)]),
    ("FixedSpectralPooling", lambda a: pooling.FixedSpectralPooling(strides=2.0, algorithm=a),
     [(4, 8, 32, 32), (2, 3, 112, 96)]),
    ("FixedSpectralPooling1d", lambda a: pooling.FixedSpectralPooling1d(strides=2.0, algorithm=a),
     [(4, 8, 100), (2, 1, 2000)]),
    ("FixedSpectralPooling3d", lambda a: pooling.FixedSpectralPooling3d(strides=2.0), [(2, 4, 8, 16, 16)]),
]


@pytest.mark.parametrize("algorithm", ["matmul", "fft"])
@pytest.mark.parametrize("name, make, shapes", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_layer_call_dispatches_few_operations_whatever_the_size(name, make, shapes, algorithm):
    if algorithm == "matmul" and name.endswith("3d"):
        pytest.skip("3-D has only the FFT form")
    for shape in shapes:  # small and large (the large matrix forms build their operators by factors)
        total, detail = _layer_call_count(make(algorithm), shape)
        assert total <= MAX_OPERATIONS, (shape, dict(detail))


def test_the_cpu_blocked_kernels_dispatch_more_than_the_compact_form():
    """The count sees the difference it is meant to measure (the blocked kernels loop over blocks)."""
    layer = pooling.DiffStride(strides=2.0, algorithm="fft")
    compact, _ = _layer_call_count(layer, (16, 16, 64, 64))
    x = torch.randn(16, 16, 64, 64, requires_grad=True)
    with settings.override(fft_block_min_bytes=0, fft_block_fraction=4, cpu_compact_max_bytes=0):
        blocked = sum(count_operations(lambda: torch.autograd.grad(layer(x).sum(), [x, layer.strides])).values())
    assert blocked > compact + 20


def _resnet_step_count(pooling_cls):
    torch.manual_seed(0)
    kwargs = {"pooling_cls": pooling_cls} if pooling_cls is not None else {}
    net = resnet.resnet18(num_output_classes=10, **kwargs)
    x, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), labels).backward()
        opt.step()

    with settings.override(**GPU_SETTINGS):
        step()
        return sum(count_operations(step).values())


@pytest.mark.parametrize("pooling_cls, limit", [(pooling.DiffStride, 3.0), (pooling.FixedSpectralPooling, 1.5)])
def test_a_resnet18_training_step_dispatches_at_most_a_few_times_the_strided_ones(pooling_cls, limit):
    strided = _resnet_step_count(None)
    ours = _resnet_step_count(pooling_cls)
    assert ours <= limit * strided, (ours, strided)


def test_off_the_cpu_auto_prefers_the_matrix_form_longer():
    """A GPU's GEMMs on tensor cores cost little beside the FFT's launches: 'auto' takes the matrix
    form up to larger maps there (``settings.fft_cost_weight_gpu``), the FFT form for long signals."""
    layer = pooling.DiffStride(strides=2.0)
    plan = layer._plan((112, 112), (2.0, 2.0))
    assert F.choose_algorithm(torch.empty(8, 64, 112, 112), plan) == "fft"
    assert F.choose_algorithm(torch.empty(8, 64, 112, 112, device="meta"), plan) == "matmul"
    long_plan = pooling.DiffStride1d(strides=2.0)._plan((16000,), (2.0,))
    assert F.choose_algorithm(torch.empty(4, 1, 16000, device="meta"), long_plan) == "fft"


# --------------------------------------------------------------------------------------------
# torch.func, meta and fake tensors, torch.export, torch.compile.


@pytest.mark.parametrize("algorithm", ["matmul", "fft"])
def test_torch_func_grad_over_the_parameters_equals_autograd(algorithm):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pooling.DiffStride(strides=(2.0, 2.5), algorithm=algorithm))
    x = torch.randn(2, 3, 20, 18)
    params = {k: v.detach() for k, v in net.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(net, p, (x,)).square().sum())(params)
    net(x).square().sum().backward()
    for name, param in net.named_parameters():
        assert torch.allclose(grads[name], param.grad, rtol=1e-5, atol=1e-6), name
    assert grads["1.strides"].abs().min() > 0


def test_torch_func_vmap_and_jvp():
    """vmap over samples equals the batched call; the layer is linear in its input, so its jvp
    along ``v`` is the layer applied to ``v``."""
    layer = pooling.DiffStride(strides=(2.0, 2.5))
    x, v = torch.randn(4, 3, 20, 18), torch.randn(4, 3, 20, 18)
    per_sample = torch.func.vmap(lambda t: layer(t[None])[0])(x)
    assert torch.allclose(per_sample, layer(x), atol=1e-6)
    y, tangent = torch.func.jvp(layer, (x,), (v,))
    assert torch.allclose(y, layer(x), atol=1e-6) and torch.allclose(tangent, layer(v), atol=1e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda device: pooling.DiffStride(strides=(2.0, 3.3), device=device), (2, 3, 40, 36)),
    (lambda device: pooling.DiffStride1d(strides=3.0, device=device), (2, 3, 301)),
    (lambda device: pooling.DiffStride3d(strides=(1.0, 2.0, 3.0), device=device), (1, 2, 10, 12, 14)),
    (lambda device: pooling.FixedSpectralPooling(strides=(1.5, 3.3)), (2, 3, 32, 32)),
])
def test_meta_and_fake_tensors_give_the_real_shapes(make, shape):
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = make(None)(torch.randn(shape))
    meta = make("meta")(torch.empty(shape, device="meta"))
    assert meta.device.type == "meta" and meta.shape == real.shape
    with FakeTensorMode():
        fake = make(None)(torch.empty(shape))
    assert fake.shape == real.shape


def test_torch_export_runs_at_the_strides_of_the_last_eager_call():
    """Export traces with fake parameters (no values to read): the plan comes from the values the
    layer last read (an eager call, ``sync_plans``, ``freeze_()`` or ``load_state_dict``)."""
    layer = pooling.DiffStride(strides=(2.0, 2.5))
    x = torch.randn(2, 3, 32, 30)
    with torch.no_grad():
        layer.strides.copy_(torch.tensor([1.7, 3.1]))
    layer(x)  # reads the new values
    exported = torch.export.export(layer, (x,))
    y = exported.module()(x)
    assert torch.allclose(y, layer(x), atol=1e-6)
    assert tuple(y.shape[2:]) == layer.output_size((32, 30))


@pytest.mark.parametrize("make", [
    lambda: pooling.DiffStride(strides=(2.0, 2.5)).freeze_(),
    lambda: pooling.FixedSpectralPooling(strides=(2.0, 3.0)),
    lambda: pooling.DiffStride1d(strides=3.0).freeze_(),
    lambda: pooling.DiffStride3d(strides=2.0).freeze_(),
])
def test_fixed_strides_compile_as_one_graph(make):
    layer = make()
    x = torch.randn((2, 3) + {1: (50,), 2: (16, 16), 3: (10, 12, 14)}[layer.ndim])
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)


def test_the_functional_op_with_a_plan_compiles_as_one_graph():
    strides = torch.tensor([2.0, 2.5], requires_grad=True)
    plan = F.diffstride_plan((24, 20), (2.0, 2.5))
    x = torch.randn(2, 3, 24, 20)
    op = torch.compile(lambda x, s: F.diff_stride2d(x, s, plan=plan), fullgraph=True, backend="eager")
    y = op(x, strides)
    (grad,) = torch.autograd.grad(y.square().sum(), strides)
    s_ref = strides.detach().clone().requires_grad_(True)
    y_ref = diffstride_fft(x, s_ref)
    (grad_ref,) = torch.autograd.grad(y_ref.square().sum(), s_ref)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(grad, grad_ref, rtol=1e-4)


def test_synced_plans_let_a_trainable_network_compile_as_one_graph_and_follow_its_strides():
    """``sync_plans`` after each step: fullgraph=True works with learnable strides; values and
    gradients equal eager; when the strides cross a bin the next sync changes the plan and the
    compiled model follows (a recompile), still equal to eager."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pooling.DiffStride(strides=(2.0, 2.0)))
    x = torch.randn(2, 3, 32, 32)
    net(x)  # eager: the layer learns its input size
    pooling.sync_plans(net)
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    for strides in [(2.0, 2.0), (2.3, 1.6), (3.1, 2.9)]:
        with torch.no_grad():
            net[1].strides.copy_(torch.tensor(strides))
        pooling.sync_plans(net)
        y = compiled(x)
        (g,) = torch.autograd.grad(y.square().sum(), net[1].strides)
        y_eager = net(x)
        (g_eager,) = torch.autograd.grad(y_eager.square().sum(), net[1].strides)
        assert y.shape == y_eager.shape, strides
        assert torch.allclose(y, y_eager, atol=1e-5) and torch.allclose(g, g_eager, rtol=1e-4)
    pooling.sync_plans(net, enabled=False)
    assert net[1]._synced_plans is None


def test_without_synced_plans_a_compiled_trainable_layer_plans_outside_the_graph():
    layer = pooling.DiffStride(strides=(2.0, 2.5))
    x = torch.randn(2, 3, 24, 24)
    compiled = torch.compile(layer, backend="eager")  # a graph break per call, the values exact
    with torch.no_grad():
        layer.strides.copy_(torch.tensor([3.0, 1.5]))
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)


# --------------------------------------------------------------------------------------------
# SpatialPooling returns a tensor of its own.


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_spatial_pooling_output_can_be_modified_in_place_without_touching_its_input(fmt):
    """A residual block: y = relu_(pool(x)) + shortcut(x); an in-place op after the pooling must
    not write into x (which the shortcut reads): values and gradients equal the out-of-place ones."""
    results = []
    for inplace in (False, True):
        torch.manual_seed(0)
        pool = pooling.SpatialPooling(strides=(1, 1))  # stride 1: a view would be x itself
        x = torch.randn(2, 3, 8, 8).contiguous(memory_format=fmt).requires_grad_(True)
        h = x * 1.0
        y = pool(h)
        y = torch.relu_(y) if inplace else torch.relu(y)
        out = y + h
        out.sum().backward()
        results.append((out.detach(), x.grad))
        assert pool(x).is_contiguous(memory_format=fmt)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# --------------------------------------------------------------------------------------------
# CUDA against the CPU, float64: every family and form (run where CUDA is available).

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA_CASES = [
    (lambda a: pooling.DiffStride(strides=(2.0, 3.3), algorithm=a, dtype=torch.float64), (2, 3, 40, 36), ["matmul", "fft"]),
    (lambda a: pooling.DiffStride(strides=1.7, shared_stride=True, algorithm=a, dtype=torch.float64), (2, 3, 31, 17),
     ["matmul", "fft"]),
    (lambda a: pooling.DiffStride1d(strides=3.0, algorithm=a, dtype=torch.float64), (2, 3, 301), ["matmul", "fft"]),
    (lambda a: pooling.DiffStride3d(strides=(1.0, 2.0, 3.0), dtype=torch.float64), (1, 2, 10, 12, 14), ["fft"]),
    (lambda a: pooling.FixedSpectralPooling(strides=(1.5, 3.3), algorithm=a), (2, 3, 32, 32), ["matmul", "fft"]),
    (lambda a: pooling.FixedSpectralPooling1d(strides=2.0, algorithm=a), (2, 3, 100), ["matmul", "fft"]),
    (lambda a: pooling.FixedSpectralPooling3d(strides=2.0), (1, 2, 8, 16, 16), ["fft"]),
    (lambda a: pooling.SpatialPooling(strides=(2, 3)), (2, 3, 32, 32), ["auto"]),
]


@CUDA
@pytest.mark.parametrize("index", range(len(CUDA_CASES)))
def test_cuda_equals_the_cpu_in_float64(index):
    make, shape, algorithms = CUDA_CASES[index]
    for algorithm in algorithms:
        results = []
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            layer = make(algorithm).to(device)
            x = torch.randn(shape, dtype=torch.float64).to(device).requires_grad_(True)
            y = layer(x)
            w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64, device=device).view(y.shape)
            (y * w).sum().backward()
            params = [p.grad.cpu() for p in layer.parameters()]
            results.append((y.detach().cpu(), x.grad.cpu(), params))
        (y0, gx0, p0), (y1, gx1, p1) = results
        assert torch.allclose(y0, y1, rtol=0, atol=1e-12), algorithm
        assert torch.allclose(gx0, gx1, rtol=0, atol=1e-12), algorithm
        assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(p0, p1)), algorithm


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_is_close_to_float32(dtype):
    layer = pooling.DiffStride(strides=(2.0, 2.5)).cuda()
    x = torch.randn(8, 16, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    reference = layer(x)
    with torch.autocast("cuda", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert ((y.float() - reference).abs().max() / reference.abs().max()).item() < 2e-2
