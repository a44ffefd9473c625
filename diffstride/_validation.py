"""The checks of user input, one function per rule, shared by the functional ops, the layers, the
ResNets and ``convert``: each raises ``TypeError`` / ``ValueError`` naming the offending value and
what was expected. Pure Python (shapes and numbers; no device reads)."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

Number = Union[int, float]

ALGORITHMS = ("auto", "matmul", "fft")
DATA_FORMATS = ("channels_first", "channels_last")
_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
_AXIS_LETTERS = {1: "L", 2: "H, W", 3: "D, H, W"}


def per_axis(value: Union[Number, Sequence[Number]], ndim: int, name: str = "strides") -> Tuple[Number, ...]:
    """``value`` as ``ndim`` numbers (a single number is used for every axis), each finite and >= 1.

    Keeps ints as ints (a strided convolution needs them); raises ``TypeError`` / ``ValueError``
    naming ``name``, the value and what was expected. Tensors are read with ``tolist()``.
    """
    if hasattr(value, "tolist") and not isinstance(value, numbers.Real):
        value = value.tolist()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = (value,) * ndim
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a number or a sequence of {ndim} numbers, but got {value!r}")
    else:
        values = tuple(value)
    if len(values) != ndim:
        expected = "a number" if ndim == 1 else f"a number or {ndim} numbers"
        raise ValueError(f"{name} must be {expected}, one per spatial axis, but got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a number or a sequence of {ndim} numbers, but got {value!r}")
        if not math.isfinite(v) or v < 1:
            raise ValueError(f"{name} must be finite numbers >= 1, but got {value!r}")
    return values


def smoothness_factor(value: float) -> float:
    """The mask's ramp width ``R``: finite and > 0 (the mask divides by it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"smoothness_factor must be a number, but got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"smoothness_factor must be finite and >= 0, but got {value}")
    if value == 0:
        raise ValueError("smoothness_factor must be > 0 (the mask divides by it), but got 0")
    return value


def stride_limits(lower: Optional[float], upper: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    """The in-graph clip of the strides: each None or a finite number >= 1, lower <= upper."""
    for name, limit in (("lower_limit_stride", lower), ("upper_limit_stride", upper)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Real)
                                  or not math.isfinite(limit) or limit < 1.0):
            raise ValueError(f"{name} must be None or a finite number >= 1, but got {limit!r}")
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"lower_limit_stride ({lower}) must not exceed upper_limit_stride ({upper})")
    return (None if lower is None else float(lower)), (None if upper is None else float(upper))


def algorithm(value: str, ndim: Optional[int] = None, what: str = "layers") -> str:
    """One of :data:`ALGORITHMS`; 3-D has only the FFT form."""
    if value not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, but got {value!r}")
    if ndim == 3 and value == "matmul":
        raise ValueError(f"algorithm='matmul' is not available for 3-D {what} (their only form is 'fft'); "
                         "use 'auto' or 'fft'")
    return value


def data_format(value: str) -> str:
    if value not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, but got {value!r}")
    return value


def spatial_input(x, ndim: int, name: str, data_format: str = "channels_first") -> None:
    """``x`` is a floating-point tensor of rank ``ndim + 2`` in the given layout."""
    import torch  # the module stays importable without torch for the pure-number checks

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, but got {type(x).__name__}")
    if x.dim() != ndim + 2:
        axes = _AXIS_LETTERS[ndim]
        layout = f"(N, C, {axes})" if data_format == "channels_first" else f"(N, {axes}, C)"
        raise ValueError(f"{name} expects a {ndim + 2}-D input {layout}, but got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, but got dtype {x.dtype}")


def stride_tensor(strides, ndim: int, name: str) -> None:
    """DiffStride's strides: a floating-point tensor of shape (1,) (shared) or (ndim,)."""
    import torch

    if not isinstance(strides, torch.Tensor):
        raise TypeError(f"{name} expects strides as a torch.Tensor (learnable), but got {type(strides).__name__}; "
                        "for fixed strides use the layer or torch.tensor(...)")
    shapes = [(1,)] if ndim == 1 else [(1,), (ndim,)]
    if tuple(strides.shape) not in shapes or not strides.is_floating_point():
        expected = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} expects a floating-point strides tensor of shape {expected}, "
                         f"but got shape {tuple(strides.shape)} and dtype {strides.dtype}")


def diffstride_size(size: Sequence[int], smoothness: float, name: str) -> None:
    """Every spatial size > R (the reference's clamp divides by ``size - R``) and >= 2."""
    for axis, n in zip(_AXIS_NAMES[len(size)], size):
        if n <= smoothness or n < 2:
            raise ValueError(
                f"{name} needs an input {axis} > smoothness_factor ({smoothness:g}) "
                f"and >= 2, but got {axis} {n} (input spatial size {tuple(size)})")


def fixed_size(size: Sequence[int], name: str) -> None:
    """Every spatial size >= 2 (spectral pooling keeps at least two bins)."""
    if any(n < 2 for n in size):
        raise ValueError(f"{name} needs spatial sizes >= 2, but got {tuple(size)}")


def spatial_size(input_size, ndim: int) -> Tuple[int, ...]:
    """A spatial size as a tuple of ``ndim`` ints (a 1-D size may be a bare int)."""
    size = (int(input_size),) if isinstance(input_size, numbers.Integral) else tuple(int(n) for n in input_size)
    if len(size) != ndim:
        raise ValueError(f"input_size must have {ndim} value(s), but got {input_size!r}")
    return size


def check_int(value, name: str, minimum: Optional[int] = None, allow_none: bool = False):
    """``value`` as an int, or a ``TypeError``/``ValueError`` naming the parameter (a Gin name in the training system)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, but got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {value}")
    return value
