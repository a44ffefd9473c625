"""The one rule for strides given by users: one finite number >= 1 per spatial axis."""
from __future__ import annotations

import math
import numbers
from typing import Sequence, Tuple, Union

Number = Union[int, float]


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
