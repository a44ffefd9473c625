"""From the name of a source read from files (``imagefolder``, ``audiofolder``,
``torchvision:<Class>``, ``hf:<name>``, ``wds:<pattern>``) to batches on the device: the sources
(:mod:`~diffstride.data.sources`), their transforms (:mod:`~diffstride.data.transforms`) and the
DataLoader workers that run them (:mod:`~diffstride.data.loader`)."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from diffstride.data import sources
from diffstride.data.batch_ops import Normalize
from diffstride.data.loader import (DeviceLoader, EpochBatchSampler, ExampleDataset, LoaderTestBatches,
                                    LoaderTrainBatches, ShardStream, StreamSampler, check_shards_for_ranks,
                                    default_num_workers)
from diffstride.data.sources import DataError, TarShards
from diffstride.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AudioTransform, ImageTransform

__all__ = ["SOURCE_PREFIXES", "is_file_source", "sources_for", "file_datasets", "FirstExamples"]


class FirstExamples:
    """The first ``n`` examples of a source (``train_examples`` / ``test_examples``)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source))
        self.kind, self.classes, self.skipped = source.kind, source.classes, source.skipped

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.source[index]


SOURCE_PREFIXES = ("imagefolder", "audiofolder", "hf:", "torchvision:", "wds:")


def is_file_source(name: str) -> bool:
    return name in ("imagefolder", "audiofolder") or name.startswith(("hf:", "torchvision:", "wds:"))


def _folder_splits(root: str, splits) -> Tuple[str, str]:
    if not os.path.isdir(root):
        raise DataError(f"data.load_datasets.data_dir = {root!r} is not a directory; expected {root}/train/<class>/... "
                        f"and {root}/val/<class>/... (or test/)")
    train = splits[0] if splits else "train"
    evaluation = splits[1] if splits else next((s for s in ("val", "test", "validation")
                                                  if os.path.isdir(os.path.join(root, s))), "val")
    for split in (train, evaluation):
        if not os.path.isdir(os.path.join(root, split)):
            present = sorted(e.name for e in os.scandir(root) if e.is_dir())
            raise DataError(f"{root} has no {split}/ split folder (it has {present}); expected {root}/train/<class>/... "
                            f"and {root}/val/<class>/... or test/ (or set data.load_datasets.splits)")
    return train, evaluation


def sources_for(name: str, data_dir: str, download: bool, splits, skip_bad_files: bool, options: dict,
                image_column=None, audio_column=None, label_column=None):
    """(training source, evaluation source) for a name of :data:`SOURCE_PREFIXES`."""
    if splits is not None and (not isinstance(splits, (list, tuple)) or len(splits) != 2
                               or not all(isinstance(s, str) for s in splits)):
        raise DataError(f"data.load_datasets.splits must be two split names (training, evaluation), "
                        f"e.g. ('train', 'val'), but got {splits!r}")
    if name in ("imagefolder", "audiofolder"):
        kind = "image" if name == "imagefolder" else "audio"
        train_split, eval_split = _folder_splits(data_dir, splits)
        train = sources.FolderSource(os.path.join(data_dir, train_split), kind, skip_bad_files)
        return train, sources.FolderSource(os.path.join(data_dir, eval_split), kind, skip_bad_files, train.classes)
    if name.startswith("torchvision:"):
        cls = name.split(":", 1)[1]
        pick = (lambda i: splits[i]) if splits else (lambda i: None)
        return (sources.TorchvisionSource(cls, data_dir, True, download, pick(0), options),
                sources.TorchvisionSource(cls, data_dir, False, download, pick(1), options))
    if name.startswith("hf:"):
        ref = name.split(":", 1)[1]
        loaded = sources.hf_splits(ref, data_dir)
        columns = dict(image_column=image_column, audio_column=audio_column, label_column=label_column)
        train = sources.HuggingFaceSource(ref, loaded, True, splits[0] if splits else None, data_dir, **columns)
        return train, sources.HuggingFaceSource(ref, loaded, False, splits[1] if splits else None, data_dir,
                                                classes=train.classes, **columns)
    pattern = name.split(":", 1)[1]
    if "{split}" not in pattern:
        raise DataError(f"a tar-shard name needs '{{split}}' where the split goes, e.g. "
                        f"'wds:/data/{{split}}-{{000000..000099}}.tar', but got {name!r}")
    train_split = splits[0] if splits else "train"
    train = sources.TarShards(pattern.replace("{split}", train_split))
    if splits:
        eval_split = splits[1]
    else:
        def present(split: str) -> bool:
            files = sources.expand_braces(pattern.replace("{split}", split))
            return bool(files) and all(os.path.isfile(f) for f in files)

        eval_split = next((s for s in ("val", "test", "validation") if present(s)), "val")
    return train, sources.TarShards(pattern.replace("{split}", eval_split), train.kind, train.classes)


def file_datasets(name: str, *, data_dir: str, download: bool, batch_size: int, augment_fn, mixup_alpha: float,
                  train_examples: Optional[int], test_examples: Optional[int], device: torch.device, rank: int,
                  world_size: int, seed: int, image_size: int, channels: int, augment: str,
                  auto_augment: Optional[str], crop_ratio: float, mean, std, sample_rate: int, clip_seconds: float,
                  audio_features: str, n_mels: int, num_workers: Optional[int], prefetch_factor: int,
                  skip_bad_files: bool, splits, shuffle_buffer: int, options: dict, image_column, audio_column,
                  label_column):
    """(train batches, test batches, number of classes, example shape) of a file source."""
    train_src, test_src = sources_for(name, data_dir, download, splits, skip_bad_files, options,
                                      image_column, audio_column, label_column)
    streaming = isinstance(train_src, TarShards)
    if train_examples is not None and not streaming:
        train_src = FirstExamples(train_src, train_examples)
    if test_examples is not None and not streaming:
        test_src = FirstExamples(test_src, test_examples)
    num_classes = len(train_src.classes)
    if num_classes < 2:
        raise DataError(f"{name} has {num_classes} class ({train_src.classes}); a classifier needs at least 2")
    if train_src.kind == "image":
        transforms = [ImageTransform(image_size, channels, train, augment, auto_augment, crop_ratio)
                      for train in (True, False)]
        shape = (channels, image_size, image_size)
        default_mean, default_std = ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else
                                     ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)))
    else:
        length = int(round(sample_rate * clip_seconds))
        transforms = [AudioTransform(sample_rate, length, train, audio_features, n_mels) for train in (True, False)]
        shape = transforms[0].shape()
        default_mean, default_std = (0.0,), (1.0,)
    normalize = Normalize(mean or default_mean, std or default_std, device,
                           torch.uint8 if train_src.kind == "image" else torch.float32, len(shape) - 1)
    workers = default_num_workers() if num_workers is None else num_workers
    per_example = 2 if mixup_alpha > 0 else 1
    global_batch = batch_size * per_example
    if global_batch % world_size:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")
    if streaming:
        check_shards_for_ranks(train_src, world_size)
        per_rank = [sum(train_src.counts[i] for i in range(r, len(train_src.shards), world_size))
                    for r in range(world_size)]
        limit = min(per_rank)
        if train_examples is not None:
            limit = min(limit, -(-train_examples // world_size))
        per_rank_batch = global_batch // world_size
        steps = limit // per_rank_batch
        if steps == 0:
            raise ValueError(f"the training shards give {limit} examples per process, fewer than one batch "
                             f"({per_rank_batch} per process)")
        stream = ShardStream(train_src, transforms[0], seed, rank, world_size, steps * per_rank_batch,
                             shuffle_buffer, train=True)
        train_loader = DeviceLoader(stream, StreamSampler(stream, per_rank_batch), workers, device, prefetch_factor,
                               skip_bad_files, stream_batch=per_rank_batch, seed=seed)
        check_shards_for_ranks(test_src, world_size)
        test_limit = sum(test_src.counts) if test_examples is None else -(-test_examples // world_size)
        test_stream = ShardStream(test_src, transforms[1], seed, rank, world_size, test_limit, 0, train=False)
        test_loader = DeviceLoader(test_stream, None, workers, device, prefetch_factor, skip_bad_files,
                              stream_batch=batch_size, seed=seed)
    else:
        if len(train_src) < global_batch:
            raise ValueError(f"the training split has {len(train_src)} examples, fewer than one batch "
                             f"({global_batch} examples with mixup_alpha={mixup_alpha})")
        sampler = EpochBatchSampler(len(train_src), global_batch, rank, world_size, seed, shuffle=True)
        steps = len(sampler)
        train_loader = DeviceLoader(ExampleDataset(train_src, transforms[0], seed), sampler, workers, device,
                               prefetch_factor, skip_bad_files, seed=seed)
        test_loader = DeviceLoader(ExampleDataset(test_src, transforms[1], seed),
                              EpochBatchSampler(len(test_src), batch_size, rank, world_size, seed, shuffle=False),
                              workers, device, prefetch_factor, skip_bad_files, seed=seed)
    train_loader.scan_skipped = list(train_src.skipped)
    test_loader.scan_skipped = list(test_src.skipped)
    return (LoaderTrainBatches(train_loader, steps, num_classes, normalize, augment_fn, mixup_alpha, seed, rank),
            LoaderTestBatches(test_loader, normalize), num_classes, shape)
