"""Batches of the built-in sets, made on the device from a split held there: no DataLoader
workers, no per-image Python. Normalisation, the reference's augmentation and its pairwise Mixup
are batch operations (:mod:`~diffstride.data.batch_ops`), their randomness keyed by
``(seed, epoch, batch, rank)`` (:mod:`~diffstride.data.randomness`)."""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from diffstride.data.batch_ops import Normalize, augment_and_mix
from diffstride.data.builtin import Split
from diffstride.data.randomness import BATCH_STREAM, example_seed

__all__ = ["EpochOrder", "InMemoryTrainBatches", "InMemoryTestBatches"]


class EpochOrder(NamedTuple):
    """An epoch of the in-memory sets: its number (which keys its batches' randomness) and order."""

    epoch: int
    perm: torch.Tensor


class InMemoryTrainBatches:
    """Training batches of one epoch, made on the device.

    Per epoch: a random permutation; for each batch, ``batch_size`` examples (``2·batch_size``
    images when Mixup pairs them), normalised, augmented, mixed and labelled one-hot. With
    ``world_size > 1`` every rank draws the same permutation and keeps its contiguous shard of
    each batch. The last incomplete batch is dropped (as the reference).
    """

    def __init__(self, split: Split, num_classes: int, batch_size: int, normalize: Normalize,
                 augment_fn: Optional[Callable], mixup_alpha: float, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")
        per_example = 2 if mixup_alpha > 0 else 1
        if len(split) < batch_size * per_example:
            raise ValueError(f"the training split has {len(split)} images, fewer than one batch "
                             f"({batch_size * per_example} images with mixup_alpha={mixup_alpha})")
        self.split, self.num_classes, self.batch_size = split, num_classes, batch_size
        self.normalize, self.augment_fn, self.mixup_alpha = normalize, augment_fn, mixup_alpha
        self.rank, self.world_size, self.per_example, self.seed = rank, world_size, per_example, seed

    def __len__(self) -> int:
        return len(self.split) // (self.batch_size * self.per_example)

    def order(self, epoch: int) -> "EpochOrder":
        """The order of one epoch, drawn from torch's global generator (of the split's device);
        the training loop restores that generator's state to draw it again on a resume."""
        return EpochOrder(epoch, torch.randperm(len(self.split), device=self.split.images.device))

    def batches(self, order: "EpochOrder", start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The epoch in ``order``, from batch ``start`` on (a run resumed mid-epoch)."""
        epoch, perm = order
        images_per_batch = self.batch_size * self.per_example
        shard = images_per_batch // self.world_size
        for i in range(start, len(self)):
            index = perm[i * images_per_batch:(i + 1) * images_per_batch]
            index = index[self.rank * shard:(self.rank + 1) * shard]
            images = self.normalize(self.split.images[index])
            labels = F.one_hot(self.split.labels[index], self.num_classes).float()
            key = example_seed(self.seed, epoch, i, self.rank, BATCH_STREAM)
            yield augment_and_mix(images, labels, self.augment_fn, self.mixup_alpha, key)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order(0))


class InMemoryTestBatches:
    """Evaluation batches in order, normalised, integer labels; with ``world_size > 1`` each rank gets every ``world_size``-th image."""

    def __init__(self, split: Split, batch_size: int, normalize: Normalize, rank: int = 0, world_size: int = 1):
        self.split = Split(split.images[rank::world_size], split.labels[rank::world_size])
        self.batch_size, self.normalize = batch_size, normalize

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.split), self.batch_size):
            yield (self.normalize(self.split.images[start:start + self.batch_size]),
                   self.split.labels[start:start + self.batch_size])


# the names before the batch iterators had a common protocol (diffstride.data.loading.TrainingBatches)
TrainBatches, TestBatches = InMemoryTrainBatches, InMemoryTestBatches
