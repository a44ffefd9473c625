"""The fast path against the float64 FFT oracle (tests/oracle.py) beyond the golden cases:
random shapes (odd and even, 1-D and 2-D), strides 1 to 4, both cropping modes, smoothness
0.5 to 8, stride limits; gradcheck in float64 for the input and the strides."""
import math
import random

import pytest
import torch

from diffstride import settings, functional as F
from diffstride import _plans
from diffstride import pooling

from .oracle import diffstride_fft, diffstride_fft_3d, fixed_spectral_fft, fixed_spectral_fft_3d


def _random_config(rng, one_d=False):
    smoothness = rng.choice([0.5, 1.0, 2.0, 3.7, 4.0, 8.0])
    low = int(math.floor(smoothness)) + 1
    sizes = (rng.randint(max(low, 2), 41),) if one_d else (rng.randint(max(low, 2), 41), rng.randint(max(low, 2), 41))
    shared = (not one_d) and rng.random() < 0.25
    n_strides = 1 if (one_d or shared) else 2
    strides = [rng.choice([1.0, 2.0, 3.0, 4.0, round(rng.uniform(1.0, 4.0), 3)]) for _ in range(n_strides)]
    if shared:
        strides = strides * 1
    return dict(size=sizes, strides=strides, smoothness=smoothness, cropping=rng.random() < 0.7)


def _run(layer_cls, cfg, dtype, x, algorithm="auto"):
    kwargs = dict(smoothness_factor=cfg["smoothness"], cropping=cfg["cropping"], dtype=dtype, algorithm=algorithm)
    if layer_cls is pooling.DiffStride:
        kwargs["shared_stride"] = len(cfg["strides"]) == 1
        strides = cfg["strides"] * (2 if len(cfg["strides"]) == 1 else 1)
    else:
        strides = cfg["strides"][0]
    kwargs.update(cfg.get("limits", {}))
    layer = layer_cls(strides=strides, **kwargs)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    w = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    (y * w).sum().backward()
    return y, x.grad, layer.strides.grad, layer.strides.detach(), w


def _oracle(cfg, x, w, mask_dtype=torch.float64):
    """Oracle output and gradients in float64; the mask in ``mask_dtype`` (the strides' dtype)."""
    strides = torch.tensor(cfg["strides"], dtype=mask_dtype, requires_grad=True)
    x = x.to(torch.float64).clone().requires_grad_(True)
    limits = cfg.get("limits", {})
    y = diffstride_fft(x, strides, cfg["smoothness"], cfg["cropping"],
                       limits.get("lower_limit_stride"), limits.get("upper_limit_stride"))
    if y.shape == w.shape:
        (y * w.to(torch.float64)).sum().backward()
    return y, x.grad, strides.grad


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("kernels", ["compact", "blocked"])
@pytest.mark.parametrize("algorithm", ["matmul", "fft"])
@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("one_d", [False, True], ids=["2d", "1d"])
def test_random_configs_match_fft_oracle_float64(seed, one_d, algorithm, kernels):
    """Both kernel families: the compact form (GPUs, small CPU inputs) and the CPU's cache-blocked
    kernels with explicit backwards (forced with ``cpu_compact_max_bytes=0``)."""
    rng = random.Random(seed * 2 + one_d)
    cfg = _random_config(rng, one_d)
    if seed % 5 == 0:  # stride limits, inside the graph
        cfg["limits"] = {"lower_limit_stride": rng.choice([None, 1.5, 2.0]), "upper_limit_stride": rng.choice([None, 2.0, 3.0])}
        if None not in cfg["limits"].values() and cfg["limits"]["lower_limit_stride"] > cfg["limits"]["upper_limit_stride"]:
            cfg["limits"]["lower_limit_stride"] = None
    shape = (2, 3) + cfg["size"]
    x = torch.randn(shape, dtype=torch.float64)
    layer_cls = pooling.DiffStride1d if one_d else pooling.DiffStride
    with settings.override(cpu_compact_max_bytes=0 if kernels == "blocked" else 1 << 40):
        y, gx, gs, _, w = _run(layer_cls, cfg, torch.float64, x, algorithm)
    y_ref, gx_ref, gs_ref = _oracle(cfg, x, w)
    assert y.shape == y_ref.shape, cfg
    assert _rel(y, y_ref) < 1e-10, cfg
    assert _rel(gx, gx_ref) < 1e-10, cfg
    assert torch.allclose(gs, gs_ref, rtol=1e-8, atol=1e-8 * gs_ref.abs().max().item() + 1e-12), (cfg, gs, gs_ref)


@pytest.mark.parametrize("algorithm", ["matmul", "fft"])
@pytest.mark.parametrize("seed", range(10))
def test_float32_matches_fft_oracle(seed, algorithm):
    rng = random.Random(1000 + seed)
    cfg = _random_config(rng)
    x = torch.randn((2, 4) + cfg["size"])
    y, gx, gs, _, w = _run(pooling.DiffStride, cfg, torch.float32, x, algorithm)
    # Float32 strides and mask as the reference (edges land where float32 puts them); FFT in float64.
    y_ref, gx_ref, gs_ref = _oracle(cfg, x, w, mask_dtype=torch.float32)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-5 and _rel(gx, gx_ref) < 1e-5
    assert _rel(gs, gs_ref) < 2e-4


def test_plan_matches_float32_mask_on_a_dense_sweep():
    """The Python plan (exact float32 emulation) keeps exactly the bins whose float32 mask is > 0,
    including strides on the edges: integers on even sizes and the clamp value size/(size-R)."""
    for size in list(range(5, 40)) + [63, 64, 65]:
        for smoothness in (1.0, 2.0, 4.0):
            if size <= smoothness:
                continue
            edge = _plans.min_stride(size, smoothness)
            for stride in (1.0, edge, 1.5, 2.0, 2.5, 3.0, 10 / 3, 4.0, size / 2, float(size)):
                s32 = torch.tensor([stride, stride], dtype=torch.float32)
                x = torch.zeros(1, 1, size, size + 1)
                ref = diffstride_fft(x, s32.clone(), smoothness, True)
                plan = F.diffstride_plan((size, size + 1), s32.tolist(), smoothness, True)
                assert plan.out_size == tuple(ref.shape[-2:]), (size, smoothness, stride)
                ref1d = diffstride_fft(x[:, :, 0, :], s32[:1].clone(), smoothness, True)
                plan1d = F.diffstride_plan((size + 1,), (s32[0].item(),), smoothness, True)
                assert plan1d.out_size == tuple(ref1d.shape[-1:])


def test_stride_rule_is_the_same_in_python_and_in_tensors():
    """The plan's stride rule (Python, float32 emulated) and the mask's (tensor, differentiable)
    give the same strides, on the clamp and limit edges too, shared or per axis, 1-D to 3-D."""
    rng = random.Random(3)
    for _ in range(400):
        ndim = rng.choice([1, 2, 3])
        smoothness = rng.choice([0.5, 2.0, 4.0, 3.7])
        size = tuple(rng.randint(int(smoothness) + 1, 40) for _ in range(ndim))
        shared = ndim == 1 or rng.random() < 0.3
        floors = [_plans.min_stride(n, smoothness) for n in size]
        candidates = floors + [1.0, 1.0001, 2.0, 2.5, 3.0, 7.25]
        values = [rng.choice(candidates) for _ in range(1 if shared else ndim)]
        lower = rng.choice([None, 1.0, 1.5, 2.0, max(floors)])
        upper = rng.choice([None, 2.0, 3.0, 8.0])
        if lower is not None and upper is not None and lower > upper:
            lower, upper = upper, lower
        python = F.effective_strides(values, size, smoothness, lower, upper)
        tensor = F._mask_strides(torch.tensor(values), size, smoothness, lower, upper).tolist()
        tensor = tensor * ndim if len(tensor) == 1 else tensor
        assert python == tuple(tensor), (values, size, smoothness, lower, upper)
        # the value the rule implements, in plain words
        for axis, s in enumerate(python):
            v = values[0] if shared else values[axis]
            floor = max(floors) if shared else floors[axis]
            expected = max(v, floor, lower or 1.0)
            expected = expected if upper is None else min(expected, upper)
            assert s == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("algorithm", ["matmul", "fft"])
@pytest.mark.parametrize("size", [(9, 10), (11, 7), (8, 8)])
@pytest.mark.parametrize("cropping", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_float64(size, cropping, shared, algorithm):
    # Away from the mask's kinks (non-integer thresholds), where finite differences are valid.
    strides = [1.73] if shared else [1.73, 2.31]
    s = torch.tensor(strides, dtype=torch.float64, requires_grad=True)
    x = torch.randn((2, 2) + size, dtype=torch.float64, requires_grad=True)
    fn = lambda x, s: F.diff_stride2d(x, s, smoothness_factor=2.5, cropping=cropping, algorithm=algorithm)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, s))


@pytest.mark.parametrize("algorithm", ["matmul", "fft"])
def test_gradcheck_float64_1d_and_fixed_pooling(algorithm):
    s = torch.tensor([1.83], dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: F.diff_stride1d(x, s, smoothness_factor=2.5, algorithm=algorithm), (x, s))
    x2 = torch.randn(2, 2, 9, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: F.fixed_spectral_pool2d(x, (1.7, 2.5), algorithm=algorithm), (x2,))
    assert torch.autograd.gradcheck(lambda x: F.fixed_spectral_pool1d(x, 2.5, algorithm=algorithm), (x,))


# ------------------------------------------------------------------------------------------
# 3-D (the FFT form only)


@pytest.mark.parametrize("seed", range(12))
def test_3d_random_configs_match_fft_oracle_float64(seed):
    rng = random.Random(5000 + seed)
    smoothness = rng.choice([1.0, 2.0, 4.0])
    size = tuple(rng.randint(int(smoothness) + 1, 17) for _ in range(3))
    shared = rng.random() < 0.25
    strides = [rng.choice([1.0, 2.0, round(rng.uniform(1.0, 3.5), 3)]) for _ in range(1 if shared else 3)]
    cropping = rng.random() < 0.75
    layer = pooling.DiffStride3d(strides=strides * (3 if shared else 1), shared_stride=shared,
                                 smoothness_factor=smoothness, cropping=cropping, dtype=torch.float64)
    x = torch.randn((2, 2) + size, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w = torch.randn(y.shape, dtype=torch.float64)
    (y * w).sum().backward()
    s_ref = torch.tensor(strides, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = diffstride_fft_3d(x_ref, s_ref, smoothness, cropping)
    assert y.shape == y_ref.shape, (size, strides, smoothness, cropping)
    assert tuple(y.shape[2:]) == layer.output_size(size)
    (y_ref * w).sum().backward()
    assert _rel(y, y_ref) < 1e-10 and _rel(x.grad, x_ref.grad) < 1e-10
    assert torch.allclose(layer.strides.grad, s_ref.grad, rtol=1e-8, atol=1e-8 * s_ref.grad.abs().max().item() + 1e-12)


def test_3d_gradcheck_float64():
    s = torch.tensor([1.73, 2.31, 1.4], dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 7, 9, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: F.diff_stride3d(x, s, smoothness_factor=2.5), (x, s))
    assert torch.autograd.gradcheck(lambda x: F.fixed_spectral_pool3d(x, (1.7, 2.5, 1.5)), (x,))


@pytest.mark.parametrize("size", [(8, 16, 16), (7, 9, 11), (2, 4, 3)])
@pytest.mark.parametrize("strides", [(2.0, 2.0, 2.0), (1.0, 1.5, 3.3)])
def test_3d_fixed_spectral_pooling_and_subsampling(size, strides):
    x = torch.randn((2, 3) + size, dtype=torch.float64)
    layer = pooling.FixedSpectralPooling3d(strides=strides)
    y = layer(x)
    ref = fixed_spectral_fft_3d(x, strides)
    assert y.shape == ref.shape and tuple(y.shape[2:]) == layer.output_size(size)
    assert _rel(y, ref) < 1e-10
    whole = tuple(int(s) for s in strides) if all(float(s).is_integer() for s in strides) else (2, 1, 3)
    sub = pooling.SpatialPooling3d(strides=whole)(x)
    assert torch.equal(sub, x[:, :, ::whole[0], ::whole[1], ::whole[2]])


@pytest.mark.parametrize("size", [(32, 32), (31, 17), (33, 32), (8, 8), (7, 2), (2, 9)])
@pytest.mark.parametrize("strides", [(2.0, 2.0), (1.5, 3.3), (3.0, 1.0), (1.2, 1.2), (4.0, 4.0)])
def test_fixed_spectral_pooling_matches_fft_oracle(size, strides):
    x = torch.randn((2, 3) + size, dtype=torch.float64)
    y = pooling.FixedSpectralPooling(strides=strides)(x)
    ref = fixed_spectral_fft(x, strides)
    assert y.shape == ref.shape
    assert _rel(y, ref) < 1e-10


@pytest.mark.parametrize("length,stride", [(32, 2.0), (31, 3.3), (9, 1.0), (100, 4.0)])
def test_fixed_spectral_pooling_1d_matches_fft_oracle(length, stride):
    x = torch.randn(2, 3, length, dtype=torch.float64)
    y = pooling.FixedSpectralPooling1d(strides=stride)(x)
    ref = fixed_spectral_fft(x, (stride,))
    assert y.shape == ref.shape
    assert _rel(y, ref) < 1e-10


@pytest.mark.parametrize("size", [(32, 32), (31, 17), (5, 6)])
@pytest.mark.parametrize("strides", [(2, 2), (3, 2), (1, 4)])
def test_spatial_pooling_is_same_padded_subsampling(size, strides):
    x = torch.randn((2, 3) + size)
    y = pooling.SpatialPooling(strides=strides)(x)
    assert torch.equal(y, x[:, :, :: strides[0], :: strides[1]])
    assert y.shape[-2:] == tuple(math.ceil(n / s) for n, s in zip(size, strides))
    x1 = torch.randn(2, 3, size[0])
    assert torch.equal(pooling.SpatialPooling1d(strides=strides[0])(x1), x1[..., :: strides[0]])
