"""Shared helpers of the training-system tests: the tiny MNIST job, the real command in a fresh
process, Gin cleaned around every test (the command line's bindings are global), and generated
image and audio folders and tar shards for the file sources."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

from . import launch


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
    """The command ``python -m diffstride.examples.main ARGS`` in a process of its own (forked from
    a server that imported torch once: tests/training/launch.py)."""
    return launch.run(args, env=env, cwd=cwd)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def _trained_then_newest_truncated(tmp_path) -> str:
    """A finished 2-epoch tiny run whose newest checkpoint (ckpt-0002.pt) was cut to 1,000 bytes,
    as a crash in the middle of writing it would leave it; returns its work directory."""
    from diffstride.train import main as main_lib

    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=2)) == 0
    with open(os.path.join(workdir, "ckpt-0002.pt"), "r+b") as f:
        f.truncate(1000)
    return workdir


def _until(condition, seconds=120.0):
    """Polls ``condition`` until it holds (returns its value) or the deadline passes (fails)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not reached within {seconds} s")


def _run_killed_at(args, event, step):
    """The command in a process of its own that SIGKILLs itself at the hook ``event`` of ``step``."""
    return launch.run(args, kill_at=(event, step))


# ----------------------------------------------------------------------------------------------
# Generated files for the file sources (image and audio folders, tar shards)

CLASSES = ("cat", "dog", "owl")


def _image(rng, i):
    """An image of a varying size and mode, as (PIL image, file extension)."""
    from PIL import Image

    h, w = (int(v) for v in rng.integers(20, 48, 2))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    kind = i % 5
    if kind == 0:
        return Image.fromarray(rgb), "jpg"
    if kind == 1:
        return Image.fromarray(rgb).convert("L"), "jpg"
    if kind == 2:
        return Image.fromarray(rgb).convert("P"), "png"
    if kind == 3:
        return Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "png"  # RGBA
    return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)), "png"  # 16-bit grayscale


def _tone(rate, seconds, freq):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every source over the same examples: ``images/{train,val}/<class>/``, ``audio/...``, the
    Hugging Face copies, tar shards of the images, and MNIST idx files."""
    import soundfile

    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    made = {"images": {}, "audio": {}}
    for split, n in (("train", 12), ("val", 4)):
        made["images"][split], made["audio"][split] = [], []
        for label, name in enumerate(CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image, ext = _image(rng, i + label)
                path = folder / f"{i:03d}.{ext}"
                image.save(path)
                made["images"][split].append((str(path), label))
            folder = root / "audio" / split / name
            folder.mkdir(parents=True)
            for i in range(n // 2):
                rate = (8000, 16000, 22050)[i % 3]
                seconds = (0.3, 0.6)[i % 2]  # shorter and longer than the clip
                path = folder / f"{i:03d}.{('wav', 'flac')[i % 2]}"
                soundfile.write(str(path), _tone(rate, seconds, 300.0 * (label + 1)), rate)
                made["audio"][split].append((str(path), label))
    made["root"] = root
    return made


def _shards(tmp_path, rows, split, per_shard):
    paths = []
    for s in range(0, len(rows), per_shard):
        path = tmp_path / f"{split}-{s // per_shard:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, (file, label) in enumerate(rows[s:s + per_shard], start=s):
                for ext, payload in ((os.path.splitext(file)[1][1:], open(file, "rb").read()),
                                     ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{key:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def _two_processes(args, kill_at=None, timeout=300):
    """The command as the two processes of a torchrun run (gloo, on this machine), each forked
    from the test server; ``kill_at=(event, step)`` SIGKILLs rank 0 at that hook, then rank 1 (as
    torchrun's agent ends the others). Returns both ranks' ``CompletedProcess``."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = []
    for rank in (0, 1):
        env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        started.append(launch.Started(args, env=env, kill_at=kill_at if rank == 0 else None))
    if kill_at is not None:
        started[0].wait(timeout)
        started[1].kill()
    return [run.result(timeout) for run in started]
