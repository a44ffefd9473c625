"""The package as PyPI users get it: a wheel that carries the configs, the license and the
console scripts, and installs and runs in a fresh virtual environment."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_scripts_and_runs_in_a_fresh_virtualenv(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    # an sdist, then the wheel built from the unpacked sdist (what `python -m build` does): the
    # sdist must carry everything the wheel needs
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), ROOT],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    (wheel,) = dist.glob("diffstride-*.whl")
    assert len(list(dist.glob("diffstride-*.tar.gz"))) == 1
    import diffstride

    assert wheel.name.startswith(f"diffstride-{diffstride.__version__}-")  # the one version source
    names = zipfile.ZipFile(wheel).namelist()
    configs = {os.path.basename(n) for n in names if n.startswith("diffstride/examples/configs/")}
    assert {"cifar10.gin", "cifar100.gin", "mnist.gin", "translated_mnist.gin", "osuleaf.gin", "imagenet.gin"} <= configs
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("diffstride-train = diffstride.train.main:cli", "diffstride-sweep = diffstride.experiments.sweep:cli"):
        assert script in entry_points
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch>=2.4\n" in metadata and "License-Expression: Apache-2.0" in metadata

    # a fresh environment that sees torch and the train extra where the running interpreter sees
    # them (its site-packages, through a .pth file: `--system-site-packages` would give the base
    # interpreter's when the tests themselves run in a virtualenv, without torch): the wheel's own
    # copy is imported, and the console script finds its packaged configs
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    with open(os.path.join(purelib, "running-interpreter.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    where = subprocess.run([str(python), "-c", "import diffstride; print(diffstride.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(venv) in where
    out = subprocess.run([str(venv / "bin" / "diffstride-train"), "--gin_config=nope"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 2 and "mnist.gin" in out.stderr and str(venv) in out.stderr
