"""Speed and memory of the pooling layers (a benchmark, not a test).

    python benchmarks/pooling.py [--batch 32] [--threads 2] [--repeats 20] [--no-memory] [--quick]
    python benchmarks/pooling.py --sweep [--quick] [--no-timing]

``--sweep``: DiffStride with ``algorithm='auto'`` against the direct torch.fft form of the
reference (``tests/oracle.py``) from 1-D lengths of 40 to 1,000,000, 2-D sizes of 8x8 to
512x512 and 3-D volumes of 16^3 and 32^3, batch x channels chosen so that each input is about
8 MiB; per size: forward+backward ms and peak MiB of both, their ratio, the extra peak memory
over the input's size (as a process sees it, and the memory in use: ``live`` in
benchmarks/memory.py, for both), and which form 'auto' took. Without it, the ResNet-18 / CIFAR shapes:
per shape, forward and forward+backward milliseconds (median of --repeats after warm-up,
the candidates timed in turns so that the slow spells of a shared machine hit them alike)
and the peak memory of forward+backward (benchmarks/memory.py), for our DiffStride (contiguous
and channels_last), the direct torch.fft implementation of the reference's semantics
(``tests/oracle.py``, as existing ports compute the layer), FixedSpectralPooling and
SpatialPooling; and the ratio of the direct FFT's forward+backward time to each, measured in the
same run.
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import interleaved_medians, machine_header  # noqa: E402
from benchmarks.memory import peak_mib  # noqa: E402
from diffstride import functional as F  # noqa: E402
from diffstride import pooling  # noqa: E402
from tests.oracle import diffstride_fft, diffstride_fft_3d  # noqa: E402

SHAPES = [(64, 32, 32), (128, 32, 32), (256, 16, 16), (512, 8, 8)]
CANDIDATES = [
    ("DiffStride", "DiffStride", "contiguous"),
    ("DiffStride channels_last", "DiffStride", "channels_last"),
    ("direct torch.fft", "direct torch.fft", "contiguous"),
    ("FixedSpectralPooling", "FixedSpectralPooling", "contiguous"),
    ("SpatialPooling", "SpatialPooling", "contiguous"),
]


class FFTDiffStride(torch.nn.Module):
    """The direct torch.fft form of the reference (tests/oracle.py) with a learnable stride parameter."""

    def __init__(self, strides):
        super().__init__()
        self.strides = torch.nn.Parameter(torch.tensor(strides, dtype=torch.float32))

    def forward(self, x):
        return diffstride_fft_3d(x, self.strides) if x.dim() == 5 else diffstride_fft(x, self.strides)


SWEEP = [(40,), (1000,), (16000,), (160000,), (1000000,), (8, 8), (16, 16), (32, 32), (56, 56), (112, 112),
         (224, 224), (512, 512), (16, 16, 16), (32, 32, 32)]
SWEEP_QUICK = [(1000,), (160000,), (32, 32), (224, 224), (16, 16, 16)]
TARGET_ELEMENTS = 1 << 21  # 8 MiB of float32 per input


def sweep_shape(size):
    """(batch, channels, *size) of about TARGET_ELEMENTS elements."""
    pixels = math.prod(size)
    channels = 16 if 16 * pixels <= TARGET_ELEMENTS else 1
    return (max(1, TARGET_ELEMENTS // (channels * pixels)), channels) + tuple(size)


def make_sweep_step(candidate, shape):
    """Forward+backward of 'auto' DiffStride or the direct torch.fft form at ``shape`` (stride 2)."""
    ndim = len(shape) - 2
    if candidate == "direct torch.fft":
        layer = FFTDiffStride([2.0] * (ndim if ndim > 1 else 1))
    else:
        layer = {1: pooling.DiffStride1d, 2: pooling.DiffStride, 3: pooling.DiffStride3d}[ndim](strides=2.0)
    torch.manual_seed(0)
    x = torch.randn(tuple(shape), requires_grad=True)
    grad = torch.randn_like(layer(x))

    def step():
        layer(x).backward(grad)
        x.grad = None
        layer.strides.grad = None

    return step


def run_sweep(sizes, repeats, memory, log=print, timing=True):
    log("| input (B x C x size) | input MiB | auto takes | auto fwd+bwd ms | torch.fft ms | torch.fft / auto "
        "| auto peak MiB | torch.fft peak MiB | auto extra peak / input | live: auto | live: torch.fft |")
    log("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        shape = sweep_shape(size)
        ndim = len(size)
        layer = {1: pooling.DiffStride1d, 2: pooling.DiffStride, 3: pooling.DiffStride3d}[ndim](strides=2.0)
        plan = layer._plan(tuple(size), F.stride_values(layer.strides))
        chosen = F.choose_algorithm(torch.empty(shape, device="meta"), plan)
        steps = [make_sweep_step("auto", shape), make_sweep_step("direct torch.fft", shape)]
        t_auto, t_fft = interleaved_medians(steps, repeats, warmup=1) if timing else (float("nan"), float("nan"))
        mib = math.prod(shape) * 4 / 2**20
        if memory:
            p_auto = peak_mib("benchmarks.pooling", "make_sweep_step", "auto", list(shape))
            p_fft = peak_mib("benchmarks.pooling", "make_sweep_step", "direct torch.fft", list(shape))
            live_auto = peak_mib("benchmarks.pooling", "make_sweep_step", "auto", list(shape), live=True)
            live_fft = peak_mib("benchmarks.pooling", "make_sweep_step", "direct torch.fft", list(shape), live=True)
        else:
            p_auto = p_fft = live_auto = live_fft = float("nan")
        log(f"| {'x'.join(map(str, shape))} | {mib:.1f} | {chosen} | {t_auto:.2f} | {t_fft:.2f} | {t_fft / t_auto:.2f}x "
            f"| {p_auto:.0f} | {p_fft:.0f} | {p_auto / mib:.2f} | {live_auto / mib:.2f} | {live_fft / mib:.2f} |")


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


def run(batch, repeats, device, memory, shapes=SHAPES):
    rows = []
    for c, h, w in shapes:
        forwards, steps, outs = [], [], []
        for _, name, fmt in CANDIDATES:
            layer, x, _ = make_layer(name, c, h, w, batch, fmt, device)

            def forward(layer=layer, x=x):
                with torch.no_grad():
                    layer(x)

            forwards.append(forward)
            steps.append(make_step(name, c, h, w, batch, fmt, device))
            outs.append("x".join(map(str, layer(x).shape[2:])))
        fwd = interleaved_medians(forwards, repeats)
        fwdbwd = interleaved_medians(steps, repeats)
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
    parser.add_argument("--sweep", action="store_true", help="the size sweep, 1-D to 3-D, 'auto' against torch.fft")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats: under 3 minutes on 2 cores")
    parser.add_argument("--no-timing", dest="timing", action="store_false",
                        help="sweep: peak memory only (robust on a busy machine, where times are not)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine_header(device, args.threads), flush=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.sweep:
        run_sweep(SWEEP_QUICK if args.quick else SWEEP, 3 if args.quick else min(args.repeats, 7), args.memory, log,
                  args.timing)
        return
    repeats = 5 if args.quick else args.repeats
    log(f"batch {args.batch}, float32, {args.device}; forward and forward+backward medians of {repeats}, in turns")
    log("| C x H x W | layer | output | forward ms | fwd+bwd ms | peak MiB | fft / this (fwd+bwd) |")
    log("|---|---|---|---:|---:|---:|---:|")
    for shape in SHAPES[:2] if args.quick else SHAPES:
        rows = run(args.batch, repeats, device, args.memory, [shape])
        fft = next(r for r in rows if r["layer"] == "direct torch.fft")
        for row in rows:
            log(f"| {row['shape']} | {row['layer']} | {row['out']} | {row['fwd']:.2f} | {row['fwdbwd']:.2f} "
                f"| {row['peak']:.0f} | {fft['fwdbwd'] / row['fwdbwd']:.2f}x |")


if __name__ == "__main__":
    main()
