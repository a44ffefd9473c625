"""Per-call overhead of the layers at small inputs, where Python (checks, planning) shows.

    python benchmarks/overhead.py [--threads 2] [--rounds 40] [--backward]

For each small input, forward+backward of the DiffStride layer ('auto') against the direct
torch.fft form of the reference (tests/oracle.py, the same computation with torch.fft and a
learnable stride parameter), timed in turns in the same run; prints the ratio layer / torch.fft
(the target: at most 1.05) and the time of the layer's planning alone (reading the strides,
the in-place clamp, the plan), the part of a call that is Python.

``--backward`` calibrates ``settings.cpu_compact_max_bytes`` instead: the FFT form's forward +
backward in the compact form (plain autograd, few operations) against the CPU's blocked kernels
(explicit backward), by input size; below the crossover the compact form is faster (fewer Python
steps), above it the blocked one (memory: no full-size complex gradient; cache blocks).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import interleaved_medians, machine_header  # noqa: E402
from benchmarks.pooling import FFTDiffStride  # noqa: E402
from diffstride import pooling, settings  # noqa: E402

SIZES = [(4, 1, (16000,)), (8, 4, (1000,)), (16, 8, (128,)), (2, 4, (32, 32)), (8, 16, (16, 16)), (1, 1, (64, 64)),
         (1, 2, (16, 16, 16))]
LAYERS = {1: pooling.DiffStride1d, 2: pooling.DiffStride, 3: pooling.DiffStride3d}


def _step(module, x, grad):
    def step():
        module(x).backward(grad)
        x.grad = None
        module.strides.grad = None
    return step


def paired_ratio(a, b, rounds: int, calls: int = 10):
    """Median over ``rounds`` of (time of ``calls`` calls of ``a``) / (the same of ``b``), timed
    back to back in each round (a noisy machine slows both of a pair alike), with the quartiles;
    and the median time of one call of each (µs)."""
    for _ in range(3):
        a(), b()
    ratios, ta, tb = [], [], []
    for _ in range(rounds):
        times = []
        for fn in (a, b):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start) / calls)
        ratios.append(times[0] / times[1])
        ta.append(times[0])
        tb.append(times[1])
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return median, q1, q3, 1e6 * statistics.median(ta), 1e6 * statistics.median(tb)


BACKWARD_SIZES = [(16, 8, (128,)), (8, 4, (1000,)), (4, 1, (16000,)), (16, 16, (4000,)), (1, 1, (64, 64)),
                  (8, 16, (16, 16)), (8, 16, (32, 32)), (16, 32, (32, 32)), (8, 64, (56, 56)), (2, 8, (16, 16, 16)),
                  (4, 8, (16, 16, 16))]


def backward_table(rounds: int) -> None:
    print("| input | input KiB | compact form µs | CPU-blocked µs | compact / blocked | quartiles |")
    print("|---|---:|---:|---:|---:|---|")
    for batch, channels, size in BACKWARD_SIZES:
        torch.manual_seed(0)
        x = torch.randn((batch, channels) + size, requires_grad=True)
        layer = LAYERS[len(size)](strides=2.0, algorithm="fft")
        step = _step(layer, x, torch.randn_like(layer(x)))

        def autograd():
            with settings.override(cpu_compact_max_bytes=1 << 62):
                step()

        def explicit():
            with settings.override(cpu_compact_max_bytes=0):
                step()

        big = x.numel() > 1 << 20
        ratio, q1, q3, t_a, t_e = paired_ratio(autograd, explicit, max(3, rounds // 4) if big else rounds, 2 if big else 10)
        shape = "x".join(map(str, (batch, channels) + size))
        print(f"| {shape} | {x.numel() * 4 / 1024:.0f} | {t_a:.0f} | {t_e:.0f} | {ratio:.2f} | {q1:.2f}-{q3:.2f} |",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--backward", action="store_true", help="calibrate settings.cpu_compact_max_bytes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_header(torch.device("cpu"), args.threads))
    if args.backward:
        return backward_table(args.rounds)
    print("| input | layer µs | torch.fft µs | layer / torch.fft (median of rounds) | quartiles | planning µs |")
    print("|---|---:|---:|---:|---|---:|")
    for batch, channels, size in SIZES:
        ndim = len(size)
        torch.manual_seed(0)
        x = torch.randn((batch, channels) + size, requires_grad=True)
        layer = LAYERS[ndim](strides=2.0)
        direct = FFTDiffStride([2.0] * (1 if ndim == 1 else ndim))
        grad = torch.randn_like(layer(x))
        ratio, q1, q3, t_layer, t_direct = paired_ratio(_step(layer, x, grad), _step(direct, x, grad), args.rounds)
        plan_time, = interleaved_medians([lambda: layer._current_plan(size)], 200, warmup=10)
        shape = "x".join(map(str, (batch, channels) + size))
        print(f"| {shape} | {t_layer:.0f} | {t_direct:.0f} | {ratio:.2f} | {q1:.2f}-{q3:.2f} | {1e3 * plan_time:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
