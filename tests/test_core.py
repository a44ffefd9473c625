"""The library core is a PyTorch library: importing it loads neither Gin nor the training stack."""
import subprocess
import sys


def test_importing_the_core_loads_no_gin_tensorboard_torchvision_or_matplotlib():
    code = ("import sys, diffstride, diffstride.resnet, diffstride.functional, diffstride.convert, "
            "diffstride.complexity, diffstride.pooling; "
            "print(sorted(m for m in ('gin', 'tensorboard', 'torchvision', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_eager_use_does_not_import_dynamo():
    """torch._dynamo takes over a second to import: the layers defer it to the first compiled call
    (a training run's processes and a user's `import diffstride` do not pay it)."""
    code = ("import sys, torch, diffstride; "
            "layer = diffstride.DiffStride(strides=2.0); layer(torch.rand(1, 1, 16, 16)).sum().backward(); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_command_line_does_not_import_dynamo_before_it_compiles():
    """The training system's modules (what `diffstride-train --help` and every run's process
    import) leave torch._dynamo to a run that compiles."""
    code = ("import sys, diffstride.train.main, diffstride.experiments.sweep, diffstride.data; "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
