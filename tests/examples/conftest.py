"""Shared helpers of the training-system tests: the tiny MNIST job, the real command in a fresh
process, and Gin cleaned around every test (the command line's bindings are global)."""
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(autouse=True)
def _clean_gin():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


TINY = [
    "data.load_datasets.train_examples = 256",
    "data.load_datasets.test_examples = 128",
    "data.load_datasets.batch_size = 32",
    "resnet.Resnet.filters = [4, 8]",
    "resnet.Resnet.strides = [1, 2]",
    "tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries = [4]",
    "tf.keras.optimizers.schedules.PiecewiseConstantDecay.values = [0.02, 0.05]",
]


def _args(workdir, epochs=2, extra=()):
    args = ["--gin_config=mnist.gin", f"--workdir={workdir}", f"--gin_bindings=train.train.num_epochs = {epochs}"]
    return args + [f"--gin_bindings={b}" for b in TINY + list(extra)]


def _run(args, env=None, cwd=None):
    """The real command in a fresh process."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "diffstride.examples.main", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def _run_killed_at(args, event, step):
    """The real command in a fresh process that SIGKILLs itself at the hook ``event`` of ``step``."""
    code = ("import os, signal, sys\n"
            "from diffstride.examples import main\n"
            "def hook(event, state):\n"
            f"    if event == {event!r} and state.step == {step}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "sys.exit(main.main(sys.argv[1:], hooks=[hook]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
