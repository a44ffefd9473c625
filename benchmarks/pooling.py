"""Speed and memory of the pooling layers at ResNet-18 / CIFAR shapes (a benchmark, not a test).

    python benchmarks/pooling.py [--batch 32] [--threads 2] [--repeats 20] [--no-memory]

Prints, per shape, forward and forward+backward milliseconds (median of --repeats after warm-up,
the candidates timed in turns so that the slow spells of a shared machine hit them alike)
and the peak memory of forward+backward (benchmarks/memory.py), for our DiffStride (contiguous
and channels_last), the direct torch.fft implementation of the reference's semantics
(``tests/oracle.py``, as existing ports compute the layer), FixedSpectralPooling and
SpatialPooling; and the ratio of the direct FFT's forward+backward time to each, measured in the
same run.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.memory import peak_mib  # noqa: E402
from diffstride import pooling  # noqa: E402
from tests.oracle import diffstride_fft  # noqa: E402

SHAPES = [(64, 32, 32), (128, 32, 32), (256, 16, 16), (512, 8, 8)]
CANDIDATES = [
    ("DiffStride", "DiffStride", "contiguous"),
    ("DiffStride channels_last", "DiffStride", "channels_last"),
    ("direct torch.fft", "direct torch.fft", "contiguous"),
    ("FixedSpectralPooling", "FixedSpectralPooling", "contiguous"),
    ("SpatialPooling", "SpatialPooling", "contiguous"),
]


class FFTDiffStride(torch.nn.Module):
    """The direct torch.fft form of DESIGN.md §2 with a learnable stride parameter."""

    def __init__(self, strides):
        super().__init__()
        self.strides = torch.nn.Parameter(torch.tensor(strides, dtype=torch.float32))

    def forward(self, x):
        return diffstride_fft(x, self.strides)


def _time(fn, repeats, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def make_layer(name, c, h, w, batch, fmt_name, device="cpu"):
    """``(layer, x, grad)`` of one candidate at one shape."""
    fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
    layer = {
        "DiffStride": lambda: pooling.DiffStride(strides=(2.0, 2.0)),
        "direct torch.fft": lambda: FFTDiffStride([2.0, 2.0]),
        "FixedSpectralPooling": lambda: pooling.FixedSpectralPooling(strides=(2.0, 2.0)),
        "SpatialPooling": lambda: pooling.SpatialPooling(strides=(2, 2)),
    }[name]().to(device)
    torch.manual_seed(0)
    x = torch.randn(batch, c, h, w, device=device).contiguous(memory_format=fmt).requires_grad_(True)
    return layer, x, torch.randn_like(layer(x))


def make_step(*args):
    """Forward+backward of one candidate (also built in a fresh process by benchmarks.memory)."""
    layer, x, grad = make_layer(*args)

    def step():
        layer(x).backward(grad)
        x.grad = None
        for p in layer.parameters():
            p.grad = None

    return step


def _interleaved_medians(fns, repeats, warmup=5):
    """Median ms of each function, timed in turns (one call each per round), so that the slow
    spells of a shared machine hit every candidate alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def run(batch, repeats, device, memory):
    rows = []
    for c, h, w in SHAPES:
        forwards, steps, outs = [], [], []
        for _, name, fmt in CANDIDATES:
            layer, x, _ = make_layer(name, c, h, w, batch, fmt, device)

            def forward(layer=layer, x=x):
                with torch.no_grad():
                    layer(x)

            forwards.append(forward)
            steps.append(make_step(name, c, h, w, batch, fmt, device))
            outs.append("x".join(map(str, layer(x).shape[2:])))
        fwd = _interleaved_medians(forwards, repeats)
        fwdbwd = _interleaved_medians(steps, repeats)
        for i, (label, name, fmt) in enumerate(CANDIDATES):
            rows.append({
                "shape": f"{c}x{h}x{w}", "layer": label, "out": outs[i], "fwd": fwd[i], "fwdbwd": fwdbwd[i],
                "peak": peak_mib("benchmarks.pooling", "make_step", name, c, h, w, batch, fmt) if memory else float("nan"),
            })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.batch, args.repeats, torch.device(args.device), args.memory)
    print(f"batch {args.batch}, {args.threads} threads, float32, {args.device}, torch {torch.__version__}")
    print("| C x H x W | layer | output | forward ms | fwd+bwd ms | peak MiB | fft / this (fwd+bwd) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        fft = next(r for r in rows if r["shape"] == row["shape"] and r["layer"] == "direct torch.fft")
        print(f"| {row['shape']} | {row['layer']} | {row['out']} | {row['fwd']:.2f} | {row['fwdbwd']:.2f} "
              f"| {row['peak']:.0f} | {fft['fwdbwd'] / row['fwdbwd']:.2f}x |")


if __name__ == "__main__":
    main()
