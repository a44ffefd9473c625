"""What every benchmark shares: the machine header, timing in turns, native low-precision support.

Benchmarks print ratios between candidates measured in the same run, in turns (one call of
each per round), so that the slow spells of a shared machine hit every candidate alike; an
absolute time says nothing about another machine.
"""
import datetime
import os
import platform
import statistics
import time
from typing import Callable, List, Sequence

import torch


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_low_precision(device: torch.device) -> List[torch.dtype]:
    """The autocast dtypes the device runs natively: on CPU bf16 needs AVX-512 BF16 or AMX, fp16
    AVX-512 FP16 or AMX-FP16 (elsewhere they are emulated, and far slower than float32)."""
    if device.type == "cuda":
        return [torch.bfloat16, torch.float16] if torch.cuda.is_bf16_supported() else [torch.float16]
    flags = cpu_flags()
    out = []
    if {"avx512_bf16", "amx_bf16"} & flags:
        out.append(torch.bfloat16)
    if {"avx512_fp16", "amx_fp16"} & flags:
        out.append(torch.float16)
    return out


def machine_header(device: torch.device, threads: int) -> str:
    """One paragraph naming what the numbers below were measured on."""
    flags = cpu_flags()
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 BF16", "avx512_bf16"),
                                   ("AVX-512 FP16", "avx512_fp16"), ("AMX-BF16", "amx_bf16")) if flag in flags]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return (f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_model()}, "
            f"{os.cpu_count()} logical cores, {threads} threads used; ISA: {', '.join(isa) or 'no AVX2'}; "
            f"GPU: {gpu}; torch {torch.__version__}, Python {platform.python_version()}")


def interleaved_medians(fns: Sequence[Callable[[], None]], repeats: int, warmup: int = 3) -> List[float]:
    """Median milliseconds of each function, timed in turns."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            bucket.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]
