"""ResNet-18 training-step speed and memory on CIFAR shapes (a benchmark, not a test).

    python benchmarks/train_step.py [--batch 32] [--threads 2] [--repeats 10]

Prints, for DiffStride, FixedSpectralPooling and strided convolutions: milliseconds per training
step (forward, backward, SGD update; median after warm-up) and the peak memory of one step
(benchmarks/memory.py), in float32 (contiguous and channels_last) and under bfloat16 autocast
(channels_last), with the TensorFlow reference's float32 time measured on this machine; the
share of the DiffStride step spent in its pooling layers (each pooling layer timed alone,
forward and backward, on the inputs it sees in the step); and the images/s of the data
pipeline alone (normalise, pad-crop-flip, pairwise Mixup on device tensors).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.memory import peak_mib  # noqa: E402
from benchmarks.pooling import _time  # noqa: E402
from diffstride import pooling, resnet  # noqa: E402
from diffstride.examples import data  # noqa: E402

REFERENCE_MS = {"DiffStride": 3269, "FixedSpectralPooling": 739, "strided conv": 334}


def _model(name):
    cls = {"DiffStride": pooling.DiffStride, "FixedSpectralPooling": pooling.FixedSpectralPooling,
           "strided conv": None}[name]
    return resnet.resnet18(num_output_classes=10, pooling_cls=cls, output_activation="softmax", weight_decay=5e-4)


VARIANTS = {  # label: (memory format, autocast dtype)
    "float32": ("contiguous", None),
    "float32 channels_last": ("channels_last", None),
    "bf16 autocast channels_last": ("channels_last", "bfloat16"),
}


def step_fn(model, batch, variant="float32"):
    fmt_name, amp = VARIANTS[variant]
    fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(resnet.l2_param_groups(model), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = F.one_hot(torch.randint(0, 10, (batch,)), 10).float()

    def step():
        with torch.autocast("cpu", dtype=getattr(torch, amp or "float32"), enabled=amp is not None):
            out = model(x)
        loss = -(y * out.float().clamp(1e-7, 1 - 1e-7).log()).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, x


def make_step(name, batch, variant):
    """One training step (also built in a fresh process by benchmarks.memory)."""
    torch.manual_seed(0)
    return step_fn(_model(name), batch, variant)[0]


def pooling_ms(model, x, repeats):
    """Forward+backward time of each pooling layer alone, on the inputs it gets in the step."""
    inputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach().clone(), o.shape)))
             for _, m in pooling.pooling_layers(model)]
    model(x)
    for h in hooks:
        h.remove()
    total = 0.0
    for layer, inp, out_shape in inputs:
        inp.requires_grad_(True)
        grad = torch.randn(out_shape)

        def run():
            layer(inp).backward(grad)
            inp.grad = None

        total += _time(run, repeats)
    return total, len(inputs)


def pipeline_images_per_second(batch, repeats):
    torch.manual_seed(0)
    split = data.Split(torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (50000,)))
    normalize = data._Normalize(data.CIFAR_MEAN, data.CIFAR_STD, "cpu")
    batches = data.TrainBatches(split, 10, batch, normalize, data.augment, mixup_alpha=0.2)
    it = iter(batches)
    next(it)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    share = None
    for name in ("DiffStride", "FixedSpectralPooling", "strided conv"):
        for variant in VARIANTS:
            torch.manual_seed(0)
            model = _model(name)
            step, x = step_fn(model, args.batch, variant)
            ms = _time(step, args.repeats)
            peak = peak_mib("benchmarks.train_step", "make_step", name, args.batch, variant) if args.memory else float("nan")
            rows.append((name, variant, ms, peak))
            if name == "DiffStride" and variant == "float32":
                pool_ms, calls = pooling_ms(model, x, args.repeats)
                share = (pool_ms, calls, ms)
    print(f"ResNet-18, CIFAR 32x32, batch {args.batch}, {args.threads} threads, CPU, torch {torch.__version__}")
    print("| pooling | precision, layout | ms / step | peak MiB | TF reference ms (float32) | reference / this |")
    print("|---|---|---:|---:|---:|---:|")
    for name, variant, ms, peak in rows:
        print(f"| {name} | {variant} | {ms:.0f} | {peak:.0f} | {REFERENCE_MS[name]} | {REFERENCE_MS[name] / ms:.2f}x |")
    pool_ms, calls, step_ms = share
    print(f"\nDiffStride pooling layers ({calls} calls, each timed alone, fwd+bwd, float32): {pool_ms:.1f} ms "
          f"= {100 * pool_ms / step_ms:.1f}% of the {step_ms:.0f} ms float32 step")
    print(f"data pipeline alone (batch {args.batch}, augment + Mixup 0.2): "
          f"{pipeline_images_per_second(args.batch, 50):.0f} images/s")


if __name__ == "__main__":
    main()
