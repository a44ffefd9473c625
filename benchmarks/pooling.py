"""Speed and memory of the pooling layers at ResNet-18 / CIFAR shapes (a benchmark, not a test).

    python benchmarks/pooling.py [--batch 32] [--threads 2] [--repeats 20]

Prints, per shape, forward and forward+backward milliseconds (median of --repeats after warm-up)
and the peak memory of one forward+backward, for our DiffStride (contiguous and channels_last),
the direct torch.fft implementation of the reference's semantics (``tests/oracle.py``, as
existing ports compute the layer), FixedSpectralPooling and SpatialPooling; and the ratio of
the direct FFT's forward+backward time to ours, all measured in the same run.
"""
import argparse
import os
import statistics
import sys
import time
import tracemalloc

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from diffstride import pooling  # noqa: E402
from tests.oracle import diffstride_fft  # noqa: E402

SHAPES = [(64, 32, 32), (128, 32, 32), (256, 16, 16), (512, 8, 8)]


class FFTDiffStride(torch.nn.Module):
    """The direct torch.fft form of DESIGN.md §2 with a learnable stride parameter."""

    def __init__(self, strides):
        super().__init__()
        self.strides = torch.nn.Parameter(torch.tensor(strides, dtype=torch.float32))

    def forward(self, x):
        return diffstride_fft(x, self.strides)


def _time(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _peak_mib(fn):
    """Peak memory of one call: CUDA allocator stats on GPU; on CPU, the profiler's allocations."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)), key=lambda e: e.time_range.start)
    for e in events:
        current += e.cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def run(batch, repeats, device):
    rows = []
    for c, h, w in SHAPES:
        base = torch.randn(batch, c, h, w, device=device)
        candidates = [
            ("DiffStride", pooling.DiffStride(strides=(2.0, 2.0)), torch.contiguous_format),
            ("DiffStride channels_last", pooling.DiffStride(strides=(2.0, 2.0)), torch.channels_last),
            ("direct torch.fft", FFTDiffStride([2.0, 2.0]), torch.contiguous_format),
            ("FixedSpectralPooling", pooling.FixedSpectralPooling(strides=(2.0, 2.0)), torch.contiguous_format),
            ("SpatialPooling", pooling.SpatialPooling(strides=(2, 2)), torch.contiguous_format),
        ]
        for name, layer, fmt in candidates:
            layer = layer.to(device)
            x = base.contiguous(memory_format=fmt).requires_grad_(True)
            y = layer(x)
            grad = torch.randn_like(y)

            def forward():
                with torch.no_grad():
                    layer(x)

            def step():
                out = layer(x)
                out.backward(grad)
                x.grad = None
                for p in layer.parameters():
                    p.grad = None

            rows.append({
                "shape": f"{c}x{h}x{w}", "layer": name, "out": "x".join(map(str, y.shape[2:])),
                "fwd": _time(forward, repeats), "fwdbwd": _time(step, repeats), "peak": _peak_mib(step),
            })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.batch, args.repeats, torch.device(args.device))
    print(f"batch {args.batch}, {args.threads} threads, float32, {args.device}, torch {torch.__version__}")
    print(f"| C x H x W | layer | output | forward ms | fwd+bwd ms | peak MiB | fft / this (fwd+bwd) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        fft = next(r for r in rows if r["shape"] == row["shape"] and r["layer"] == "direct torch.fft")
        print(f"| {row['shape']} | {row['layer']} | {row['out']} | {row['fwd']:.2f} | {row['fwdbwd']:.2f} "
              f"| {row['peak']:.1f} | {fft['fwdbwd'] / row['fwdbwd']:.2f}x |")


if __name__ == "__main__":
    main()
