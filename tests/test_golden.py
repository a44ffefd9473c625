"""Every case of the reference's golden data (tests/data/tf_reference.*): outputs, input
gradients, stride gradients and strides after the forward.

Tolerances (max|ours - ref| / max|ref|, float32): 1e-5 for outputs and input gradients, 2e-4
for stride gradients (the reference's own float32 stride gradients are within 5e-5 of float64).
Every case runs with the automatic choice and each form forced, in both kernel families: the
compact form (GPUs, small CPU inputs; through autograd) and the CPU's cache-blocked kernels with
their own backwards (``cpu_compact_max_bytes=0``).
"""
import pytest
import torch

from diffstride import pooling, settings

from .conftest import load_golden, rel_err

META, ARRAYS = load_golden()
CASES = META["cases"]


def _case_id(case):
    opts = ""
    if case["layer"] == "DiffStride":
        opts = f"-R{case['smoothness_factor']:g}-crop{int(case['cropping'])}-shared{int(case['shared_stride'])}"
    return f"{case['index']}-{case['layer']}-{case['data_format']}-{'x'.join(map(str, case['input_shape']))}-S{case['strides']}{opts}"


def _build(case, algorithm="auto"):
    kwargs = {"strides": case["strides"], "data_format": case["data_format"]}
    if case["layer"] != "SpatialPooling":
        kwargs["algorithm"] = algorithm
    if case["layer"] == "DiffStride":
        for key in ("smoothness_factor", "cropping", "shared_stride", "trainable", "lower_limit_stride", "upper_limit_stride"):
            kwargs[key] = case[key]
    return getattr(pooling, case["layer"])(**kwargs)


def test_golden_data_is_complete():
    assert META["num_cases"] == len(CASES) == 67
    assert {c["layer"] for c in CASES} == {"DiffStride", "FixedSpectralPooling", "SpatialPooling"}


@pytest.mark.parametrize("algorithm", ["auto", "matmul", "fft", "blocked-matmul", "blocked-fft"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, algorithm):
    """Each form of the layer, forced, and the automatic choice, in both kernel families."""
    arr = lambda key: torch.from_numpy(ARRAYS[f"case{case['index']}_{key}"])  # noqa: E731
    # the golden inputs are small: they take the compact form unless told not to
    blocked = algorithm.startswith("blocked-")
    layer = _build(case, algorithm.replace("blocked-", ""))
    if f"case{case['index']}_strides_init" in case["keys"] and case["layer"] == "DiffStride":
        assert torch.equal(layer.strides.detach(), arr("strides_init"))
    x = arr("x").clone().requires_grad_(True)
    with settings.override(cpu_compact_max_bytes=0 if blocked else 1 << 40):
        y = layer(x)
        (y * arr("w")).sum().backward()
    assert tuple(y.shape) == tuple(case["output_shape"])
    assert rel_err(y, arr("y")) < 1e-5
    assert rel_err(x.grad, arr("grad_x")) < 1e-5
    if case["layer"] == "DiffStride":
        assert rel_err(layer.strides.grad, arr("grad_strides")) < 2e-4
        assert torch.equal(layer.strides.detach(), arr("strides_after"))
