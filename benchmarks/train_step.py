"""ResNet-18 training-step speed and memory on CIFAR shapes (a benchmark, not a test).

    python benchmarks/train_step.py [--batch 32] [--threads 2] [--repeats 10] [--no-memory] [--quick]
    python benchmarks/train_step.py --imagenet [--batch 8] [--repeats 5]

Prints the machine, then a line per measurement as it goes: for DiffStride,
FixedSpectralPooling and strided convolutions, milliseconds per training step (forward,
backward, SGD update; the three poolings timed in turns, median after warm-up) and the peak
memory of one step (benchmarks/memory.py), in float32 (contiguous and channels_last) and under
bfloat16 / float16 autocast where the CPU runs them natively (AVX-512 BF16 / AMX; elsewhere
they are emulated and slower than float32, and the rows are skipped with a line saying so).
Each row's ratio is against the strided-convolution step of the same variant, measured in the
same run. Then the share of the DiffStride step spent in its pooling layers (each timed alone
on the inputs it sees in the step) and the images/s of the data pipeline alone. ``--quick``
(float32 channels_last only, 3 repeats) finishes in well under 3 minutes on 2 cores.

``--imagenet`` prints instead the 224x224 rows: torchvision's ResNet-18 converted to DiffStride
(``diffstride.train.models``, the model of ``imagenet.gin``) against the strided original,
milliseconds per step (eager and through ``torch.compile``) and peak memory (eager).

The TensorFlow reference, timed in the same run, is benchmarks/reference_tf.py.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import interleaved_medians, machine_header, native_low_precision  # noqa: E402
from benchmarks.memory import peak_mib  # noqa: E402
from diffstride import pooling, resnet  # noqa: E402
from diffstride import data  # noqa: E402

POOLINGS = ("DiffStride", "FixedSpectralPooling", "strided conv")


def _model(name):
    cls = {"DiffStride": pooling.DiffStride, "FixedSpectralPooling": pooling.FixedSpectralPooling,
           "strided conv": None}[name]
    return resnet.resnet18(num_output_classes=10, pooling_cls=cls, output_activation="softmax", weight_decay=5e-4)


VARIANTS = {  # label: (memory format, autocast dtype)
    "float32": ("contiguous", None),
    "float32 channels_last": ("channels_last", None),
    "bf16 autocast channels_last": ("channels_last", "bfloat16"),
    "fp16 autocast channels_last": ("channels_last", "float16"),
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

        total += interleaved_medians([run], repeats)[0]
    return total, len(inputs)


def pipeline_images_per_second(batch, repeats):
    torch.manual_seed(0)
    split = data.Split(torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (50000,)))
    normalize = data.Normalize(data.CIFAR_MEAN, data.CIFAR_STD, "cpu")
    batches = data.TrainBatches(split, 10, batch, normalize, data.augment, mixup_alpha=0.2)
    it = iter(batches)
    next(it)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def imagenet_step(name, batch, compiled):
    """A training step of torchvision's ResNet-18 at 224x224: converted to DiffStride, or the
    strided original; through torch.compile or eager (also built in a fresh process by benchmarks.memory)."""
    from diffstride.train import models

    torch.manual_seed(0)
    model = models.torchvision_model("resnet18", num_output_classes=1000,
                                     pooling_cls=pooling.DiffStride if name == "DiffStride" else None)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(resnet.l2_param_groups(model, 5e-5), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    if compiled:  # as the training loop compiles (loop.compiled): dynamic sizes, recompile limit
        from diffstride.train.loop import compiled

        net = compiled(model, model)
    else:
        net = model

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def imagenet_rows(batch, repeats, memory, log):
    log(f"torchvision ResNet-18, ImageNet 224x224, batch {batch}, float32 channels_last, CPU; "
        f"DiffStride (diffstride.train.models, via convert) and the strided original timed in turns")
    log("| model | mode | ms / step | peak MiB | DiffStride / strided (same mode) |")
    log("|---|---|---:|---:|---:|")
    for compiled in (False, True):
        mode = "torch.compile" if compiled else "eager"
        started = time.perf_counter()
        steps = [imagenet_step(name, batch, compiled) for name in ("DiffStride", "strided conv")]
        for step in steps:  # the first call compiles
            step()
        warm = time.perf_counter() - started
        times = interleaved_medians(steps, repeats, warmup=1)
        # peak memory in fresh processes, eager only (each compiled one would compile again, minutes on a CPU)
        peaks = [peak_mib("benchmarks.train_step", "imagenet_step", name, batch, compiled)
                 if memory and not compiled else float("nan") for name in ("DiffStride", "strided conv")]
        for name, ms, peak in zip(("DiffStride", "strided conv"), times, peaks):
            log(f"| {name} | {mode} | {ms:.0f} | {peak:.0f} | {times[0] / times[1]:.2f}x |" if name == "DiffStride"
                else f"| {name} | {mode} | {ms:.0f} | {peak:.0f} | 1.00x |")
        log(f"({mode}: building and the first steps took {warm:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--quick", action="store_true", help="float32 channels_last only, 3 repeats, no memory")
    parser.add_argument("--imagenet", action="store_true",
                        help="only the 224x224 rows: torchvision ResNet-18 converted vs strided, eager and compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(machine_header(torch.device("cpu"), args.threads))
    if args.imagenet:
        return imagenet_rows(args.batch, 3 if args.quick else args.repeats, args.memory and not args.quick, log)
    log(f"ResNet-18, CIFAR 32x32, batch {args.batch}, CPU; the three poolings timed in turns")
    native = native_low_precision(torch.device("cpu"))
    variants = ["float32 channels_last"] if args.quick else list(VARIANTS)
    repeats = 3 if args.quick else args.repeats
    memory = args.memory and not args.quick
    log("| pooling | precision, layout | ms / step | peak MiB | this / strided conv (same variant) |")
    log("|---|---|---:|---:|---:|")
    float32_diffstride = None
    for variant in variants:
        amp = VARIANTS[variant][1]
        if amp is not None and getattr(torch, amp) not in native:
            log(f"| (skipped) | {variant} | – | – | this CPU has no native {amp} (AVX-512 BF16/FP16 or AMX): "
                f"emulated, it is slower than float32 |")
            continue
        steps, models = [], []
        for name in POOLINGS:
            torch.manual_seed(0)
            model = _model(name)
            step, x = step_fn(model, args.batch, variant)
            steps.append(step)
            models.append((model, x))
        times = interleaved_medians(steps, repeats, warmup=1)
        for name, ms in zip(POOLINGS, times):
            peak = peak_mib("benchmarks.train_step", "make_step", name, args.batch, variant) if memory else float("nan")
            log(f"| {name} | {variant} | {ms:.0f} | {peak:.0f} | {ms / times[-1]:.2f}x |")
        if variant.startswith("float32"):
            float32_diffstride = (models[0], times[0], variant)
    model, step_ms, variant = float32_diffstride
    pool_ms, calls = pooling_ms(*model, repeats)
    log(f"DiffStride pooling layers ({calls} calls, each timed alone, fwd+bwd, {variant}): {pool_ms:.1f} ms "
        f"= {100 * pool_ms / step_ms:.1f}% of the {step_ms:.0f} ms step")
    log(f"data pipeline alone (batch {args.batch}, augment + Mixup 0.2): "
        f"{pipeline_images_per_second(args.batch, 50):.0f} images/s")


if __name__ == "__main__":
    main()
