"""Calibrates the settings' fft_cost_weight_*: the matrix form against the FFT form.

    python benchmarks/algorithm.py [--threads 2] [--repeats 7] [--quick]

For DiffStride (stride 2, float32, forward+backward) at 1-D and 2-D sizes, both forms forced
and timed in turns, prints the cost model's ratio matmul_cost / fft_cost and the measured time
ratio t_matmul / t_fft. The FFT form should win exactly where the cost ratio exceeds the
weight (``diffstride.settings``): the crossover is where the time ratio passes 1, and the weight
to set is the cost ratio there (the script prints the interval it lies in), for each class of
sizes that has its own weight: 1-D (``fft_cost_weight_1d``), 2-D maps whose sides are powers of
two (``fft_cost_weight_2d_power_of_two``), other 2-D maps (``fft_cost_weight_2d``). 2-D sizes are
timed on contiguous and on channels_last inputs. On another machine, set what it finds with
``diffstride.settings.set_defaults(fft_cost_weight_2d=...)``.

How the defaults were set: one run of this script (2 threads of an AMD EPYC with AVX-512,
float32, forward+backward, 2026-11-22 14:11 UTC; table in docs/speed.md). The 1-D matrix form (one
GEMM) won at cost ratio 4.3 (L = 64, 0.64x the FFT form's time) and lost from 11.6 (L = 256):
weight 7. In 2-D, contiguous and channels_last alike, it won at 20x20 and 24x24 (ratios 4.4, 4.8;
the FFT form 0.72x-0.85x) and lost from 28x28 (5.2, 1.1x): weight 5; 16x16 and 32x32 (4.0, 5.5)
went to the FFT form (1.0x-1.2x and 1.3x-1.7x): weight 3.5 for sides that are powers of two. A
finer run of sizes 16 to 32 agreed, except 26x26 (ratio 5.15, 2 x 13: a slow FFT length), where
the matrix form won. Maps of at most ``kronecker_max_pixels`` (64) stay on the matrix form (one
Kronecker GEMM: 4x faster than torch.fft at 8x8, benchmarks/pooling.py). CUDA could not be
measured: the CPU values are used there too.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import interleaved_medians, machine_header  # noqa: E402
from diffstride import functional as F  # noqa: E402
from diffstride import _costs  # noqa: E402
from diffstride import pooling, settings  # noqa: E402

# (batch, channels, spatial size): inputs of 2-16 MB, channel counts as in real networks
SIZES = [(64, 64, (64,)), (64, 64, (256,)), (32, 32, (1000,)), (8, 32, (4000,)), (4, 8, (16000,)),
         (32, 64, (16, 16)), (32, 64, (20, 20)), (32, 64, (24, 24)), (32, 64, (28, 28)), (32, 64, (32, 32)),
         (16, 64, (40, 40)), (8, 64, (56, 56)), (8, 32, (112, 112)), (4, 16, (224, 224)), (2, 3, (512, 512))]
QUICK = [(64, 64, (256,)), (32, 32, (1000,)), (32, 64, (32, 32)), (8, 32, (112, 112)), (2, 3, (512, 512))]


def _step(size, batch, channels, algorithm, layout="contiguous"):
    cls = pooling.DiffStride1d if len(size) == 1 else pooling.DiffStride
    layer = cls(strides=2.0, algorithm=algorithm)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn((batch, channels) + size).contiguous(memory_format=fmt).requires_grad_(True)
    grad = torch.randn_like(layer(x))

    def step():
        layer(x).backward(grad)
        x.grad = layer.strides.grad = None

    return layer, step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="five sizes, three repeats (about a minute)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    print(machine_header(torch.device("cpu"), args.threads), flush=True)
    print("| input | layout | output | cost ratio (matmul/fft) | matmul ms | fft ms | t_matmul / t_fft | auto takes |",
          flush=True)
    print("|---|---|---|---:|---:|---:|---:|---|", flush=True)
    wins = {}
    for batch, channels, size in QUICK if args.quick else SIZES:
        for layout in ("contiguous", "channels_last") if len(size) == 2 else ("contiguous",):
            layer, matmul = _step(size, batch, channels, "matmul", layout)
            _, fft = _step(size, batch, channels, "fft", layout)
            t_matmul, t_fft = interleaved_medians([matmul, fft], repeats, warmup=1)
            out = layer.output_size(size)
            ratio = _costs.matmul_cost(size, out) / _costs.fft_cost(size, out)
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.empty((batch, channels) + size).contiguous(memory_format=fmt)
            auto = F.choose_algorithm(x, layer._plan(size, F.stride_values(layer.strides)))
            power_of_two = len(size) == 2 and all(n & (n - 1) == 0 for n in size)
            wins.setdefault((len(size), power_of_two), []).append((ratio, t_matmul / t_fft))
            print(f"| {'x'.join(map(str, (batch, channels) + size))} | {layout} | {'x'.join(map(str, out))} | "
                  f"{ratio:.1f} | {t_matmul:.2f} | {t_fft:.2f} | {t_matmul / t_fft:.2f} | {auto} |", flush=True)
    for (ndim, power_of_two), pairs in sorted(wins.items()):
        what = f"{ndim}-D" + (" sides powers of two" if power_of_two else " other sizes" if ndim > 1 else "")
        name = f"fft_cost_weight_{ndim}d{'_power_of_two' if power_of_two else ''}"
        weight = getattr(settings.current(), name)
        low = max((r for r, t in pairs if t < 1), default=0.0)
        high = min((r for r, t in pairs if t >= 1 and r > low), default=float("inf"))
        if not any(t < 1 for _, t in pairs):
            print(f"{what}: the FFT form is faster at every size measured (cost ratios from {high:.1f}); "
                  f"{name} = {weight:g} should be below {high:.1f}")
            continue
        print(f"{what}: the matrix form is faster up to cost ratio {low:.1f}, the FFT form from {high:.1f}; "
              f"{name} = {weight:g} should lie between")

if __name__ == "__main__":
    main()
