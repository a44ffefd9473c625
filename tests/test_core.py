"""The library core is a PyTorch library: importing it loads neither Gin nor the training stack."""
import subprocess
import sys


def test_importing_the_core_loads_no_gin_tensorboard_torchvision_or_matplotlib():
    code = ("import sys, diffstride, diffstride.resnet, diffstride.functional, diffstride.convert, "
            "diffstride.complexity, diffstride.pooling; "
            "print(sorted(m for m in ('gin', 'tensorboard', 'torchvision', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
