"""DiffStride on a GPU: layer calls and training steps against their baselines (a benchmark, not a test).

    python benchmarks/gpu.py                 # on a CUDA machine: every table, in about 3 minutes
    python benchmarks/gpu.py --no-compile    # eager only (about 1 minute)
    python benchmarks/gpu.py --dry-run       # the same code on the CPU at toy sizes, in seconds (CI runs it)

Prints the machine, then:

1. **Layers**: forward+backward of one call, median of ``--repeats`` timed with CUDA events, at
   the shapes of the GPU-first issue (CIFAR and 224² ResNet-18 stages), float32 and bf16 autocast:
   DiffStride ('auto'), FixedSpectralPooling, the plain torch.fft transcription of the reference
   (``tests/oracle.py``, what other ports compute) and strided slicing; the ratio
   transcription / DiffStride (the issue's target: >= 2x), the operations one call dispatches
   (``diffstride.profiling``) and, on CUDA, the kernels it launches (``torch.profiler``). Then the
   matrix and FFT forms forced, beside the cost model's ratio: where the matrix form stops winning
   is the value for ``settings.fft_cost_weight_gpu`` (16 until measured).
2. **Training steps** (bf16 autocast, channels_last, SGD): Pre-Act ResNet-18 on CIFAR (batch 256)
   and torchvision's ResNet-18 converted at 224² (batch 128), for DiffStride, FixedSpectralPooling
   and the strided network; each spectral network also **with its pooling layers replaced by a
   free resize to the same output sizes** (a crop: the "oracle" that costs nothing), so that the
   method's extra multiply-adds (maps keep about size/S + 2R) are told apart from the cost of our
   pooling. Columns: ms per step, peak memory, ratio to the oracle (target <= 1.3x, memory
   <= 1.5x) and to the strided network. Eager, then ``torch.compile`` (the spectral networks with
   :func:`diffstride.pooling.sync_plans` after each step, as the training loop does).

Each timing is a median over repeats in turns with its baseline in the same run; absolute times
say nothing about another machine.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import machine_header  # noqa: E402
from diffstride import pooling, resnet, settings  # noqa: E402
from diffstride.profiling import count_operations  # noqa: E402
from tests.oracle import diffstride_fft  # noqa: E402

LAYER_SHAPES = [(256, 64, 32, 32), (256, 128, 16, 16), (256, 256, 8, 8),
                (64, 64, 112, 112), (64, 128, 56, 56), (64, 256, 28, 28)]
DRY_LAYER_SHAPES = [(2, 4, 16, 16)]


class _Transcription(torch.nn.Module):
    """The reference written directly with torch.fft (tests/oracle.py), with a stride parameter."""

    def __init__(self, strides=(2.0, 2.0)):
        super().__init__()
        self.strides = torch.nn.Parameter(torch.tensor(strides))

    def forward(self, x):
        return diffstride_fft(x, self.strides)


class _Slicing(torch.nn.Module):
    def forward(self, x):
        return x[:, :, ::2, ::2]


# --------------------------------------------------------------------------------------------
# Timing.


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_in_turns(fns, device, repeats, warmup=None):
    """Median milliseconds of each function, timed in turns (CUDA events on a GPU)."""
    warmup = min(3, repeats) if warmup is None else warmup
    for fn in fns:
        for _ in range(warmup):
            fn()
    _sync(device)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                bucket.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                bucket.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def peak_gib(fn, device):
    """Peak memory of one call above what was allocated before it (CUDA; None on the CPU)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 30


def kernels_per_call(fn, device):
    """CUDA kernels one call launches (torch.profiler), or None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        _sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


# --------------------------------------------------------------------------------------------
# 1. Layers.


def forms_table(device, shapes, repeats):
    """The two forms forced, against the cost model's ratio: where the matrix form stops winning,
    ``matmul_cost / fft_cost`` is the value for ``settings.fft_cost_weight_gpu``."""
    from diffstride import functional as F
    from diffstride._costs import fft_cost, matmul_cost

    print("\n## The two forms (DiffStride, float32, forward + backward, ms): calibrates settings.fft_cost_weight_gpu\n")
    print("| input | matrix form | FFT form | FFT / matrix | cost-model ratio (matmul / fft) | 'auto' takes |")
    print("|---|---:|---:|---:|---:|---|")
    for shape in shapes:
        x = torch.randn(shape, device=device, requires_grad=True)
        layers = [pooling.DiffStride(strides=2.0, algorithm=a).to(device) for a in ("matmul", "fft")]
        calls = [lambda layer=layer: torch.autograd.grad(layer(x).sum(), [x, layer.strides]) for layer in layers]
        ms = time_in_turns(calls, device, repeats)
        plan = layers[0]._plan(tuple(shape[2:]), (2.0, 2.0))
        ratio = matmul_cost(shape[2:], plan.out_size) / fft_cost(shape[2:], plan.out_size)
        print(f"| {'x'.join(map(str, shape))} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[1] / ms[0]:.2f}x | {ratio:.1f} "
              f"| {F.choose_algorithm(x, plan)} |")
        sys.stdout.flush()


def layer_table(device, shapes, repeats):
    print("\n## Layers: forward + backward of one call (ms; ops = non-view operations dispatched)\n")
    print("| input | dtype | DiffStride | FixedSpectralPooling | torch.fft transcription | slicing "
          "| transcription / DiffStride | ops DiffStride / Fixed / transcription | kernels DiffStride / Fixed / transcription |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for shape in shapes:
        for amp in (None, torch.bfloat16):
            layers = [pooling.DiffStride(strides=2.0), pooling.FixedSpectralPooling(strides=2.0), _Transcription(),
                      _Slicing()]
            layers = [layer.to(device) for layer in layers]
            x = torch.randn(shape, device=device, requires_grad=True)
            calls = []
            for layer in layers:
                params = [x] + [p for p in layer.parameters() if p.requires_grad]

                def call(layer=layer, params=params):
                    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        y = layer(x)
                    torch.autograd.grad(y.float().sum(), params)

                calls.append(call)
            ms = time_in_turns(calls, device, repeats)
            ops = [sum(count_operations(c).values()) for c in calls[:3]]
            kernels = [kernels_per_call(c, device) for c in calls[:3]]
            name = "bf16 autocast" if amp else "float32"
            print(f"| {'x'.join(map(str, shape))} | {name} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[2]:.3f} | {ms[3]:.3f} "
                  f"| {ms[2] / ms[0]:.2f}x | {' / '.join(map(str, ops))} | {' / '.join(_fmt(k, '{}') for k in kernels)} |")
            sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# 2. Training steps.


def _with_free_resizes(model, example):
    """``model`` with every pooling layer's call replaced by a crop to the size it outputs for the
    same input size on ``example`` (a layer shared by two branches, or called at two sizes, keeps
    one crop per input size)."""
    table = {}

    def record(module, inputs, output):
        table[(id(module), tuple(inputs[0].shape[2:]))] = tuple(output.shape[2:])

    hooks = [layer.register_forward_hook(record) for _, layer in pooling.pooling_layers(model)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    for _, layer in pooling.pooling_layers(model):
        def crop(x, layer=layer):
            return x[(..., *(slice(0, n) for n in table[(id(layer), tuple(x.shape[2:]))]))]
        layer.forward = crop
    return model


def _networks(kind, device, image_size, classes):
    """name -> model: the spectral networks, their oracles and the strided network."""
    example = torch.randn(2, 3, image_size, image_size, device=device)

    def build(cls):
        torch.manual_seed(0)
        if kind == "cifar":
            return resnet.resnet18(num_output_classes=classes, pooling_cls=cls).to(device)
        from diffstride.train import models

        return models.torchvision_model("resnet18", num_output_classes=classes, pooling_cls=cls,
                                        image_size=image_size).to(device)

    nets = {"strided": build(None)}
    for label, cls in (("DiffStride", pooling.DiffStride), ("FixedSpectralPooling", pooling.FixedSpectralPooling)):
        nets[label] = build(cls)
        nets[f"{label} oracle"] = _with_free_resizes(build(cls), example)
    return nets


def _step(model, batch, image_size, classes, device, compiled):
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    net = model
    trainable = any(getattr(m, "trainable", False) for _, m in pooling.pooling_layers(model))
    if compiled:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model(x[:2])  # eager: the layers learn their sizes
        pooling.sync_plans(model)
        net = torch.compile(model, backend=compiled)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if compiled and trainable:
            pooling.sync_plans(model)

    return step


def step_table(kind, device, batch, image_size, classes, repeats, compiled):
    title = "Pre-Act ResNet-18, CIFAR" if kind == "cifar" else "torchvision ResNet-18 converted"
    mode = f"torch.compile ({compiled})" if compiled else "eager"
    print(f"\n## Training step: {title}, {image_size}², batch {batch}, bf16 autocast, channels_last, {mode}\n")
    print("| network | ms / step | peak GiB | / its oracle (time) | / its oracle (memory) | / strided (time) "
          "| ops / step (/ strided) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    nets = _networks(kind, device, image_size, classes)
    steps = {name: _step(model, batch, image_size, classes, device, compiled) for name, model in nets.items()}
    ms = dict(zip(steps, time_in_turns(list(steps.values()), device, repeats)))
    mem = {name: peak_gib(step, device) for name, step in steps.items()}
    ops = {name: sum(count_operations(step).values()) for name, step in steps.items()} if not compiled else {}
    for name in steps:
        oracle = f"{name} oracle" if f"{name} oracle" in steps else None
        ratio_t = ms[name] / ms[oracle] if oracle else None
        ratio_m = mem[name] / mem[oracle] if oracle and mem[name] is not None and mem[oracle] else None
        op_text = f"{ops[name]} ({ops[name] / ops['strided']:.2f}x)" if ops else "-"
        print(f"| {name} | {ms[name]:.2f} | {_fmt(mem[name])} | {_fmt(ratio_t, '{:.2f}x')} | {_fmt(ratio_m, '{:.2f}x')} "
              f"| {ms[name] / ms['strided']:.2f}x | {op_text} |")
        sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU at toy sizes: checks the script (CI)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="eager training steps only")
    args = parser.parse_args(argv)
    started = time.time()
    if args.dry_run:
        device, repeats = torch.device("cpu"), 1
        shapes, cifar, imagenet, backend = DRY_LAYER_SHAPES, (2, 32), (2, 32), "eager"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run it on a GPU machine, or pass --dry-run")
        device, repeats = torch.device("cuda"), args.repeats
        shapes, cifar, imagenet, backend = LAYER_SHAPES, (256, 32), (128, 224), "inductor"
    print(machine_header(device, torch.get_num_threads()))
    # the dry run takes the compact kernels, as a GPU does (the CPU's blocked ones are not what runs there)
    with settings.override(cpu_blocked_kernels=not args.dry_run):
        layer_table(device, shapes, repeats)
        forms_table(device, shapes, repeats)
        for compiled in ([None] if args.no_compile else [None, backend]):
            step_table("cifar", device, cifar[0], cifar[1], 10, repeats, compiled)
            if not (args.dry_run and compiled):  # (the dry run compiles one network kind: seconds, not minutes)
                step_table("imagenet", device, imagenet[0], imagenet[1], 10 if args.dry_run else 1000, repeats,
                           compiled)
    print(f"\n# {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
