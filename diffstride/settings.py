"""The kernels' tuning knobs in one place: a frozen settings object and a context manager.

The defaults were measured on the project's machine (2 CPU cores, float32) by the scripts in
``benchmarks/`` (the story of each value is in ``benchmarks/algorithm.py`` and
``docs/speed.md``). They change speed and memory, never results: both forms give the same values
and gradients whatever the settings.

    >>> from diffstride import settings
    >>> settings.current().fft_cost_weight_2d
    5.0
    >>> with settings.override(fft_cost_weight_2d=100.0):      # e.g. to calibrate another machine
    ...     settings.current().fft_cost_weight_2d
    100.0
    >>> settings.current().fft_cost_weight_2d
    5.0
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

__all__ = ["Settings", "current", "override", "set_defaults"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The tuning knobs of :mod:`diffstride._kernels` (immutable; see :func:`override`)."""

    #: 'auto' takes the FFT form when the matrix form's multiply-adds exceed this many times the
    #: FFT form's ``n log2 n`` count: 1-D signals.
    fft_cost_weight_1d: float = 7.0
    #: The same for 2-D maps.
    fft_cost_weight_2d: float = 5.0
    #: The same for 2-D maps whose sides are powers of two (the FFT libraries' fastest lengths).
    fft_cost_weight_2d_power_of_two: float = 3.5
    #: Maps of at most this many pixels use one Kronecker-product GEMM (the matrix form).
    kronecker_max_pixels: int = 64
    #: Bytes of the matrix form's intermediate per block of samples on CPU.
    cpu_block_bytes: int = 4 << 20
    #: Operators up to this many multiply-adds (K · n_out · n_in) are built by direct products,
    #: larger ones by an inverse FFT.
    direct_operator_max: int = 1 << 22
    #: The FFT form's blocks: at most this many bytes of input ...
    fft_block_bytes: int = 8 << 20
    #: ... and at most 1 / this of the input per block ...
    fft_block_fraction: int = 8
    #: ... except inputs of at most this many bytes, which are one block ...
    fft_block_min_bytes: int = 1 << 20
    #: ... and 1-D blocks of at least this many planes per thread (a 1-D plane is one transform,
    #: run on one thread).
    fft_planes_per_thread: int = 2
    #: The FFT form keeps the kept spectrum for the backward when it holds at most this fraction
    #: of the input's elements, else recomputes it there.
    keep_spectrum_max: float = 0.75
    #: On CPU, inputs larger than ``cpu_compact_max_bytes`` take the cache-blocked kernels with
    #: explicit backwards (faster there on 2 cores, first derivatives only); False: every call takes
    #: the compact form that GPUs use (few operations, second derivatives, torch.func).
    cpu_blocked_kernels: bool = True
    #: CPU inputs of at most this many bytes take the compact form: fewer Python steps, where a
    #: call is short enough for them to show (calibrated by ``benchmarks/overhead.py --backward``).
    cpu_compact_max_bytes: int = 256 << 10
    #: The compact form builds the matrix form's operators with one GEMM of the mask values and a
    #: basis of (kept bins × operator elements), cached per plan, up to this many elements; larger
    #: ones by two small products per axis (memory linear in the sizes, a few more operations).
    compact_basis_max: int = 1 << 22
    #: Off the CPU (GPUs), 'auto' takes the FFT form when the matrix form's multiply-adds exceed
    #: this many times the FFT form's count: GEMMs on tensor cores cost little beside the FFT's
    #: launches and memory traffic. Not yet calibrated on a GPU (benchmarks/gpu.py measures both forms).
    fft_cost_weight_gpu: float = 16.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise TypeError(f"settings.{field.name} must be True or False, but got {value!r}")
                continue
            kind = float if field.type in ("float", float) else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
                raise TypeError(f"settings.{field.name} must be {'a number' if kind is float else 'an integer'}, "
                                f"but got {value!r}")
            if value < 0:
                raise ValueError(f"settings.{field.name} must be >= 0, but got {value!r}")


_current = Settings()


def current() -> Settings:
    """The settings in force."""
    return _current


def _replace(base: Settings, changes: dict) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; expected some of {sorted(names)}")
    return dataclasses.replace(base, **changes)


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """``with override(name=value, ...):`` the settings with these changes until the block ends
    (nested blocks stack; process-wide, as timm's layer config: the autograd engine may run a
    backward on another thread). Unknown names and bad values are refused."""
    global _current
    before = _current
    _current = _replace(before, changes)
    try:
        yield _current
    finally:
        _current = before


def set_defaults(**changes) -> Settings:
    """Changes the settings for the rest of the process, e.g. after calibrating another machine
    with ``benchmarks/algorithm.py``; returns them."""
    global _current
    _current = _replace(_current, changes)
    return _current
