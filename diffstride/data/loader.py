"""The input pipeline of the sources that are read from files (:mod:`~diffstride.data.sources`):
``torch.utils.data.DataLoader`` workers decode and transform each example; the training device
normalises, augments in batches (``augment_fn``), mixes and labels, as for the in-memory sets.

Deterministic by construction:

- each epoch's order is a permutation drawn from ``(seed, epoch)``, and every example's random
  transform from ``(seed, epoch, index)`` (torch's generator is seeded for that example alone,
  inside ``fork_rng``), so the number of workers never changes a batch, and a run resumed at
  batch ``k`` of an epoch reads exactly the batches ``k, k+1, ...`` it would have read;
- over ``world_size`` processes every global batch is cut into contiguous per-rank shards: each
  example is read at most once per epoch, by one rank; the last ``N mod batch`` examples of the
  epoch's order (a different few each epoch) are left out, as the in-memory path does;
- tar shards stream (:class:`ShardStream`): shard ``i`` belongs to rank ``i mod world_size``;
  each epoch a rank reads its shards in an order drawn from ``(seed, epoch, rank)`` through a
  shuffle buffer seeded the same way; every worker reads its rank's stream and decodes every
  ``num_workers``-th example of it, so the batches do not depend on the number of workers; a
  resumed run reads past the examples already trained on without decoding them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import select
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from diffstride.data.batch_ops import augment_and_mix
from diffstride.data.randomness import BATCH_STREAM, example_seed
from diffstride.data.sources import BadExample, DataError, TarShards

__all__ = ["ExampleDataset", "EpochBatchSampler", "ShardStream", "DeviceLoader", "LoaderTrainBatches",
           "LoaderTestBatches", "StreamSampler", "default_num_workers", "check_shards_for_ranks", "exit_with"]


def default_num_workers() -> int:
    """The cores this process may use, shared among the processes of this machine (torchrun's
    ``LOCAL_WORLD_SIZE``), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's CPU generator and Python's ``random`` seeded for one example, restored afterwards
    (``torch.manual_seed`` would also seed every accelerator: 100x slower per call)."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


def _transformed(transform, example) -> Tuple[Optional[torch.Tensor], Any]:
    """(tensor, label), or (None, message) for a bad example."""
    try:
        return transform(example.payload, example.name), example.label
    except BadExample as err:
        return None, str(err)


class ExampleDataset(torch.utils.data.Dataset):
    """Map-style: ``dataset[(epoch, index)]`` is example ``index`` transformed with the random
    numbers of ``(seed, epoch, index)``, or ``(None, message)`` when it cannot be decoded."""

    def __init__(self, source, transform: Callable, seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        with _seeded(example_seed(self.seed, epoch, index)):
            try:
                example = self.source[index]
            except BadExample as err:
                return None, str(err)
            return _transformed(self.transform, example)


def collate(items: Sequence[Tuple[Optional[torch.Tensor], Any]]):
    """(images, labels, messages of the bad examples left out)."""
    good = [(x, y) for x, y in items if x is not None]
    bad = [y for x, y in items if x is None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.long), bad


class EpochBatchSampler:
    """This rank's share of each global batch of the epoch, as ``[(epoch, index), ...]``.

    Training: a permutation from ``(seed, epoch)``, global batches of ``global_batch`` examples
    (the last incomplete one left out), from batch ``start`` on. Evaluation (``shuffle=False``):
    every ``world_size``-th example from ``rank``, in order, in batches of ``global_batch``.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world_size: int, seed: int, shuffle: bool):
        self.size, self.global_batch, self.rank, self.world_size = size, global_batch, rank, world_size
        self.seed, self.shuffle, self.epoch, self.start = seed, shuffle, 0, 0

    def __len__(self) -> int:
        if self.shuffle:
            return self.size // self.global_batch
        return -(-len(range(self.rank, self.size, self.world_size)) // self.global_batch)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        if not self.shuffle:
            mine = list(range(self.rank, self.size, self.world_size))
            for i in range(0, len(mine), self.global_batch):
                yield [(-1, j) for j in mine[i:i + self.global_batch]]
            return
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.size, generator=generator).tolist()
        shard = self.global_batch // self.world_size
        for i in range(self.start, len(self)):
            batch = order[i * self.global_batch:(i + 1) * self.global_batch]
            yield [(self.epoch, j) for j in batch[self.rank * shard:(self.rank + 1) * shard]]


# ----------------------------------------------------------------------------------------------
# Streaming tar shards


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's stream of tar-shard examples for one epoch (see the module docstring).

    Yields single examples (the DataLoader runs with ``batch_size=None``; its workers take
    turns, so the stream's order is kept). ``epoch`` and ``start`` (examples of this rank already
    trained on) are set before each epoch's iterator is made.
    """

    def __init__(self, shards: TarShards, transform: Callable, seed: int, rank: int, world_size: int,
                 per_rank_examples: int, shuffle_buffer: int, train: bool):
        self.shards, self.transform, self.seed = shards, transform, seed
        self.rank, self.world_size, self.train = rank, world_size, train
        self.limit, self.shuffle_buffer = per_rank_examples, shuffle_buffer
        self.epoch, self.start = 0, 0
        self.mine = list(range(rank, len(shards.shards), world_size))

    def _raw(self) -> Iterator[Tuple[int, str, Any]]:
        """(shard, key, members) of this rank in the epoch's order (members None: not read)."""
        order = list(self.mine)
        if self.train:
            rng = random.Random(example_seed(self.seed, self.epoch, self.rank))
            rng.shuffle(order)
        for shard in order:
            for key, members in self.shards.examples(shard):
                yield shard, key, members

    def _ordered(self) -> Iterator[Tuple[int, str, Any]]:
        if not self.train or self.shuffle_buffer <= 1:
            yield from self._raw()
            return
        rng = random.Random(example_seed(self.seed, self.epoch, self.rank, 1))
        buffer: List[Tuple[int, str, Any]] = []
        for item in self._raw():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = rng.randrange(len(buffer))
            yield buffer[j]
            buffer[j] = item
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for position, (shard, key, members) in enumerate(self._ordered()):
            if position >= self.limit:
                return
            if position < self.start or position % workers != worker:
                continue
            with _seeded(example_seed(self.seed, self.epoch, self.rank, position)):
                try:
                    example = self.shards.example(shard, key, members)
                except BadExample as err:
                    yield None, str(err)
                    continue
                yield _transformed(self.transform, example)


# ----------------------------------------------------------------------------------------------
# Batches on the device


class DeviceLoader:
    """Builds the DataLoader and moves its batches to the device, counting bad examples."""

    def __init__(self, dataset, sampler, num_workers: int, device: torch.device, prefetch_factor: int,
                 skip_bad_files: bool, stream_batch: Optional[int] = None, seed: int = 0):
        self.device, self.skip_bad_files, self.stream_batch = device, skip_bad_files, stream_batch
        self.bad: set = set()  # names of the examples left out (skip_bad_files)
        self.scan_skipped: List[str] = []  # files left out when the source was scanned
        self.sampler = sampler
        # a generator of its own: a DataLoader iterator draws its workers' base seed from it, not
        # from torch's global generator (a draw per epoch with 0 workers, one with persistent
        # workers, which changed whatever drew from that generator next)
        kwargs = dict(num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate,
                      worker_init_fn=functools.partial(_worker_init, main_pid=os.getpid()),
                      generator=torch.Generator().manual_seed(seed))
        if num_workers > 0:
            kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=stream_batch is None)
        if stream_batch is None:
            self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **kwargs)
        else:
            kwargs["collate_fn"] = None
            self.loader = torch.utils.data.DataLoader(dataset, batch_size=None, **kwargs)

    @property
    def skipped(self) -> int:
        """Distinct files left out so far (when scanned, and when they failed to decode)."""
        return len(self.skipped_files())

    def skipped_files(self) -> set:
        """The files left out so far (scanned out, or failed to decode), by path."""
        return set(self.scan_skipped) | self.bad

    def _batches(self):
        if self.stream_batch is None:
            yield from self.loader
            return
        items = []
        for item in self.loader:
            items.append(item)
            if len(items) == self.stream_batch:
                yield collate(items)
                items = []
        if items:
            yield collate(items)

    def __iter__(self) -> Iterator[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]:
        """This rank's batches on the device; ``(None, None)`` for a batch whose every example was
        a skipped bad file (so that the batch still counts: resume positions and DDP's steps)."""
        for images, labels, bad in self._batches():
            if bad:
                if not self.skip_bad_files:
                    raise BadExample(f"{bad[0]}. Remove or repair the file, or set "
                                     f"data.load_datasets.skip_bad_files = True to skip such files "
                                     f"(they are counted in metrics.json)")
                self.bad.update(bad)
            if images is None:
                yield None, None
                continue
            yield (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True))


def _worker_init(worker_id: int, main_pid: int) -> None:
    torch.set_num_threads(1)  # decoding and transforms: one thread per worker process
    # (a forked worker lets go of the run's work-directory lock at once: diffstride.train.workdir)
    if os.getppid() != main_pid:
        # Started through a forkserver (Python 3.14's default on Linux): DataLoader's own watchdog
        # watches this process's parent, the forkserver, which the workers themselves keep alive;
        # after a SIGKILL of the run they would wait for work forever.
        exit_with(main_pid)


def exit_with(pid: int) -> None:
    """Ends this process as soon as process ``pid`` ends: a daemon thread waiting on a Linux pidfd
    (no polling), else checking every second. A ``pid`` already gone (the run was killed while
    this worker started) ends it at once."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3)
        fd = None

    def wait() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has ended
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:  # alive, another user's (a reused PID): keep waiting
                    pass
        os._exit(0)

    threading.Thread(target=wait, name=f"exit-with-{pid}", daemon=True).start()


class _LoaderShare:
    """This process's share of a split read through a :class:`DeviceLoader`, and the files it left out."""

    loader: DeviceLoader

    @property
    def skipped(self) -> int:
        return self.loader.skipped

    def skipped_files(self) -> set:
        return self.loader.skipped_files()


class LoaderTrainBatches(_LoaderShare):
    """Training batches read through :class:`DeviceLoader`, following the protocol
    :class:`~diffstride.data.loading.TrainingBatches` as the in-memory batches do."""

    def __init__(self, loader: DeviceLoader, steps: int, num_classes: int, normalize: Callable,
                 augment_fn: Optional[Callable], mixup_alpha: float, seed: int = 0, rank: int = 0):
        self.loader, self.steps, self.num_classes = loader, steps, num_classes
        self.normalize, self.augment_fn, self.mixup_alpha = normalize, augment_fn, mixup_alpha
        self.seed, self.rank = seed, rank

    def __len__(self) -> int:
        return self.steps

    @property
    def may_skip(self) -> bool:
        """Whether a batch can come empty (``(None, None)``: all its files bad and skipped)."""
        return self.loader.skip_bad_files

    def order(self, epoch: int) -> int:
        """The epoch's order is a function of (seed, epoch): the epoch number stands for it."""
        return epoch

    def batches(self, order: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        sampler = self.loader.sampler
        sampler.epoch, sampler.start = order, start
        done = start
        for images, labels in self.loader:
            if done >= self.steps:
                break
            batch, done = done, done + 1
            if images is None:  # every file of this share was bad: the step is skipped (train_one_epoch)
                yield None, None
                continue
            images = self.normalize(images)
            labels = F.one_hot(labels, self.num_classes).float()
            if self.mixup_alpha > 0 and images.shape[0] % 2:  # a bad example was skipped: pairs need an even count
                images, labels = images[:-1], labels[:-1]
            key = example_seed(self.seed, order, batch, self.rank, BATCH_STREAM)
            yield augment_and_mix(images, labels, self.augment_fn, self.mixup_alpha, key)


class LoaderTestBatches(_LoaderShare):
    """Evaluation batches in order (each rank its share), normalised, integer labels."""

    def __init__(self, loader: DeviceLoader, normalize: Callable):
        self.loader, self.normalize = loader, normalize

    def __iter__(self):
        for images, labels in self.loader:
            if images is not None:  # (None: every file of the batch was bad and skipped)
                yield self.normalize(images), labels


class StreamSampler:
    """Carries ``epoch`` and ``start`` to a :class:`ShardStream` (set before each epoch)."""

    def __init__(self, stream: ShardStream, per_rank_batch: int):
        self.stream, self.per_rank_batch = stream, per_rank_batch

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.stream.epoch = value

    @property
    def start(self) -> int:
        return self.stream.start // self.per_rank_batch

    @start.setter
    def start(self, batches: int) -> None:
        self.stream.start = batches * self.per_rank_batch


def check_shards_for_ranks(shards: TarShards, world_size: int) -> None:
    if len(shards.shards) < world_size:
        raise DataError(f"{len(shards.shards)} tar shards for {world_size} processes: every process reads whole "
                        f"shards, so there must be at least as many shards as processes")
