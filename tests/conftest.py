import json
import os

# torch.compile's Inductor compiles in a pool of worker processes by default; on the 2-core machines
# the suite runs on, with pytest-xdist's workers already using the cores, a pool doubled the time of
# a compiling test (42 s against 21 s measured): compile in the test's own process. Set before
# Inductor is imported; an explicit setting in the environment wins.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import numpy as np
import pytest
import torch

DATA = os.path.join(os.path.dirname(__file__), "data")

# Under pytest-xdist, the workers share the cores: one worker per core and its own threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts seeded (the training system's tests also clean Gin: tests/training/conftest.py)."""
    torch.manual_seed(0)


def load_golden():
    """The reference's outputs and gradients (TensorFlow 2.21, float32), shipped in tests/data."""
    with open(os.path.join(DATA, "tf_reference.json")) as f:
        meta = json.load(f)
    arrays = np.load(os.path.join(DATA, "tf_reference.npz"))
    return meta, arrays


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|: the tolerance measure of the layers issue."""
    ours = ours.detach().to(torch.float64)
    ref = torch.as_tensor(ref).to(torch.float64)
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def onnxruntime_outputs(model, x):
    """``model`` exported with ``torch.onnx.export(dynamo=True)`` and run on ``x`` in onnxruntime's
    CPU provider: its output as a tensor (skips the test without onnxruntime / onnxscript)."""
    import io

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), dynamo=True).save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def move_strides(model, rng):
    """Every DiffStride instance of ``model`` to its own random strides, as training moves them
    (each stride times U[0.75, 1.3], at least 1); ``rng`` a ``random.Random``."""
    from diffstride import pooling

    with torch.no_grad():
        for _, layer in pooling.pooling_layers(model):
            layer.strides.copy_(torch.tensor([max(1.0, v * rng.uniform(0.75, 1.3)) for v in layer.strides.tolist()]))
