"""The run's random draws, each keyed by what it is for, never read from torch's global stream.

A run is a pure function of (config, seed): an epoch's order is drawn from (seed, epoch), an
example's augmentation from (seed, epoch, index), and a batch's device-side randomness (Mixup's
weights, ``augment_fn``) from (seed, epoch, batch, rank). Then the number of DataLoader workers,
a mid-epoch kill and resume, or anything else that draws from torch's global generators (a
DataLoader iterator, a user's code) never changes a result.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

__all__ = ["example_seed", "seeded_on", "BATCH_STREAM"]

#: The last number of a batch's key (:func:`example_seed`), so that it never equals another key.
BATCH_STREAM = 2


def example_seed(*numbers: int) -> int:
    """A well-mixed 63-bit seed from integers (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([n & 0xFFFFFFFFFFFFFFFF for n in numbers]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


@contextlib.contextmanager
def seeded_on(device: torch.device, seed: int) -> Iterator[None]:
    """torch's generator of the CPU, and of ``device`` when it is a GPU, seeded with ``seed``
    inside the block and restored afterwards: code in the block (Mixup, a user's ``augment_fn``
    drawing with ``torch.rand``) draws a stream of its own, and the run's global stream is
    untouched. (``torch.manual_seed`` would seed every accelerator: far slower per call.)"""
    cpu_state = torch.get_rng_state()
    cuda = device.type == "cuda"
    cuda_state = torch.cuda.get_rng_state(device) if cuda else None
    torch.default_generator.manual_seed(seed)
    if cuda:
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda:
            torch.cuda.set_rng_state(cuda_state, device)
