"""Data sources read one example at a time: class folders of images or audio, any classification
dataset of ``torchvision.datasets``, Hugging Face datasets, and WebDataset-style tar shards.

A source knows its classes and, for an index, the file (or row) it reads and how to decode it;
:mod:`~diffstride.data.files` turns sources into deterministic, sharded batches. Decoding
happens where it is called (in the DataLoader's workers), never for the whole split at once.
Everything a source can check without decoding is checked when it is built: a missing folder,
split or column, an empty class folder, a file that is neither an image nor audio. What only
decoding shows (a corrupt file) raises :class:`BadExample` naming the file.
"""
from __future__ import annotations

import dataclasses
import inspect
import glob
import io
import os
import re
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DataError", "BadExample", "IMAGE_EXTENSIONS", "AUDIO_EXTENSIONS", "Example", "FolderSource",
           "TorchvisionSource", "HuggingFaceSource", "TarShards", "decode_image", "decode_audio", "expand_braces", "hf_splits"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff")
LABEL_MEMBERS = frozenset({"cls", "txt", "label"})


class DataError(ValueError):
    """The data is not what the training system can read: names the file, folder, split or column."""


class BadExample(DataError):
    """One example could not be decoded (see ``data.load_datasets.skip_bad_files``)."""


@dataclasses.dataclass
class Example:
    """What a source gives for one index: ``payload`` (a path, bytes, or an already decoded PIL
    image) in ``kind`` ('image' or 'audio'), the integer label and a name for messages."""

    payload: Any
    label: int
    name: str


# ----------------------------------------------------------------------------------------------
# Decoding


def decode_image(payload: Any, channels: int, name: str):
    """A PIL image in mode 'RGB' (``channels`` 3) or 'L' (1), from a path, bytes or a PIL image.

    Palette images go through RGBA (their transparency) to RGB; RGBA and LA lose their alpha;
    16-bit and 32-bit integer images ('I;16', 'I') are scaled to 8 bits by their type's range,
    floating-point ('F') images are taken as [0, 1].
    """
    from PIL import Image

    try:
        if isinstance(payload, Image.Image):
            image = payload
        else:
            image = Image.open(io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload)
        image.load()
    except Exception as err:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError, ...
        raise BadExample(f"{name}: cannot be decoded as an image ({type(err).__name__}: {err})") from None
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() <= 65535 else float(2 ** 31 - 1)
        image = Image.fromarray(np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "P":
        image = image.convert("RGBA")
    target = "RGB" if channels == 3 else "L"
    return image if image.mode == target else image.convert(target)


def decode_audio(payload: Any, name: str) -> Tuple[np.ndarray, int]:
    """(float32 samples (frames,) or (frames, channels), sample rate) read by ``soundfile``."""
    try:
        import soundfile
    except ImportError:
        raise DataError("audio is read with the soundfile package: pip install -e \".[data]\"") from None
    try:
        data, rate = soundfile.read(io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload,
                                    dtype="float32", always_2d=False)
    except Exception as err:  # soundfile.LibsndfileError (a RuntimeError), OSError, ...
        raise BadExample(f"{name}: cannot be read as audio ({type(err).__name__}: {err})") from None
    if data.size == 0:
        raise BadExample(f"{name}: the audio has no samples")
    return data, rate


# ----------------------------------------------------------------------------------------------
# Class folders


class FolderSource:
    """``root/<class>/<file>`` (any depth below the class folder), classes in sorted order.

    Hidden files (``.DS_Store``, ...) are ignored; any other file whose extension is not one of
    ``extensions`` is bad data: refused here naming it, or with ``skip_bad_files`` left out and
    counted in :attr:`skipped`.
    """

    def __init__(self, root: str, kind: str, skip_bad_files: bool = False, classes: Optional[Sequence[str]] = None):
        extensions = IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS
        self.root, self.kind = root, kind
        if not os.path.isdir(root):
            raise DataError(f"{root} is not a directory; expected class folders {root}/<class>/<files>")
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise DataError(f"{root} has no class folders; expected {root}/<class>/<files>")
        self.classes = list(classes) if classes is not None else found
        extra = sorted(set(found) - set(self.classes))
        if extra:
            raise DataError(f"{root} has class folders that the training split does not have: {extra} "
                            f"(expected the classes {self.classes})")
        self.files: List[str] = []
        self.labels: List[int] = []
        self.skipped: List[str] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            members = []
            for parent, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file in sorted(files):
                    if file.startswith("."):
                        continue
                    path = os.path.join(parent, file)
                    if file.lower().endswith(extensions):
                        members.append(path)
                    elif skip_bad_files:
                        self.skipped.append(path)
                    else:
                        raise DataError(f"{path} is not {'an image' if kind == 'image' else 'an audio file'} "
                                        f"(expected one of {', '.join(extensions)}); remove it, or set "
                                        f"data.load_datasets.skip_bad_files = True to skip such files")
            if not members and os.path.isdir(folder):
                raise DataError(f"the class folder {folder} has no {kind} files; every class needs at least one "
                                f"(expected {', '.join(extensions)})")
            self.files += members
            self.labels += [label] * len(members)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Example:
        return Example(self.files[index], self.labels[index], self.files[index])


# ----------------------------------------------------------------------------------------------
# torchvision.datasets


class TorchvisionSource:
    """A classification dataset of ``torchvision.datasets`` by class name, its images undecoded
    by transforms (``dataset[i]`` gives a PIL image and the class index)."""

    TRAIN_SPLITS = ("train", "trainval")
    EVAL_SPLITS = ("test", "val", "valid")

    def __init__(self, class_name: str, root: str, train: bool, download: bool, split: Optional[str] = None,
                 options: Optional[Dict[str, Any]] = None):
        import torchvision  # (the train extra) imported where a torchvision source is read

        cls = getattr(torchvision.datasets, class_name, None)
        if not isinstance(cls, type):
            available = sorted(n for n in dir(torchvision.datasets) if n[:1].isupper() and n not in ("VisionDataset",))
            raise DataError(f"torchvision.datasets has no dataset {class_name!r}; expected one of {available}")
        params = inspect.signature(cls).parameters
        kwargs = dict(options or {})
        if "download" in params:
            kwargs["download"] = download
        if "train" in params:
            attempts = [{"train": train}]
        elif "split" in params:
            names = [split] if split is not None else list(self.TRAIN_SPLITS if train else self.EVAL_SPLITS)
            attempts = [{"split": name} for name in names]
        else:
            raise DataError(f"torchvision.datasets.{class_name} has neither a 'train' nor a 'split' argument: it has "
                            f"no training and test splits to read (use 'imagefolder' on its files instead)")
        errors = []
        for attempt in attempts:
            try:
                self.dataset = cls(root=root, **attempt, **kwargs)
                break
            except ValueError as err:  # verify_str_arg: an unknown split name
                errors.append(f"{attempt}: {err}")
            except Exception as err:  # absent files, no network: torchvision raises many types
                raise DataError(
                    f"torchvision.datasets.{class_name}(root={root!r}, {attempt}) could not be loaded "
                    f"({type(err).__name__}: {err}); put its files in {root} or set "
                    f"data.load_datasets.download = True where there is internet") from None
        else:
            raise DataError(f"torchvision.datasets.{class_name} has none of the splits tried: {'; '.join(errors)}; "
                            f"set data.load_datasets.splits")
        self.name = f"torchvision.datasets.{class_name}"
        targets = next((getattr(self.dataset, a) for a in ("targets", "labels", "_labels", "y") if
                        hasattr(self.dataset, a)), None)
        self.targets = None if targets is None else [int(t) for t in np.asarray(targets).reshape(-1)]
        classes = getattr(self.dataset, "classes", None)
        if classes:
            self.classes = [str(c) for c in classes]
        elif self.targets is not None:
            self.classes = [str(i) for i in range(max(self.targets) + 1)]
        else:
            raise DataError(f"{self.name} lists neither its classes nor its targets: the number of classes is unknown")
        self.kind = "image"
        self.skipped: List[str] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Example:
        try:
            image, label = self.dataset[index]
        except Exception as err:
            raise BadExample(f"{self.name} example {index}: could not be read ({type(err).__name__}: {err})") from None
        return Example(image, int(label), f"{self.name} example {index}")


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets


def hf_splits(name: str, data_dir: Optional[str]):
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face datasets need the datasets package: pip install -e \".[data]\"") from None
    if os.path.isdir(name):
        try:
            loaded = datasets.load_from_disk(name)
        except FileNotFoundError:  # a folder of files (imagefolder, csv, parquet, ...) rather than save_to_disk
            loaded = datasets.load_dataset(name, cache_dir=data_dir)
    else:
        try:
            loaded = datasets.load_dataset(name, cache_dir=data_dir)
        except Exception as err:
            raise DataError(f"the Hugging Face dataset {name!r} could not be loaded ({type(err).__name__}: {err}); "
                            f"a hub name needs internet the first time (then its cache), or give a folder "
                            f"written by Dataset.save_to_disk") from None
    if isinstance(loaded, datasets.Dataset):
        raise DataError(f"the Hugging Face dataset {name!r} is a single split; expected a DatasetDict with a "
                        f"training and a test split (DatasetDict({{'train': ..., 'test': ...}}).save_to_disk)")
    return loaded


class HuggingFaceSource:
    """One split of a Hugging Face dataset: its image or audio column read undecoded (the
    pipeline decodes it), its label column as class indices."""

    TRAIN_SPLITS = ("train",)
    EVAL_SPLITS = ("test", "validation", "valid", "val")

    def __init__(self, name: str, splits, train: bool, split: Optional[str], data_dir: Optional[str],
                 image_column: Optional[str] = None, audio_column: Optional[str] = None,
                 label_column: Optional[str] = None, classes: Optional[Sequence[str]] = None):
        import datasets

        candidates = [split] if split is not None else list(self.TRAIN_SPLITS if train else self.EVAL_SPLITS)
        found = next((s for s in candidates if s in splits), None)
        if found is None:
            have = sorted(splits)
            train_name = next((s for s in have if s in self.TRAIN_SPLITS), have[0] if have else "train")
            eval_name = next((s for s in have if s in self.EVAL_SPLITS and s != train_name),
                             next((s for s in have if s != train_name), "test"))
            raise DataError(f"the Hugging Face dataset {name!r} has no split {' or '.join(map(repr, candidates))}; "
                            f"it has {have}: name the two to use, e.g. data.load_datasets.splits = "
                            f"({train_name!r}, {eval_name!r})")
        ds = splits[found]
        features = ds.features
        self.name = f"hf:{name}[{found}]"

        def column(explicit, kinds, usual, what):
            if explicit is not None:
                if explicit not in features:
                    raise DataError(f"{self.name} has no column {explicit!r} (data.load_datasets.{what}); "
                                    f"its columns are {sorted(features)}")
                return explicit
            typed = [c for c, f in features.items() if isinstance(f, kinds)]
            if typed:
                return typed[0]
            return next((c for c in usual if c in features), None)

        image = column(image_column, (datasets.Image,), ("image", "img"), "image_column")
        audio = column(audio_column, (datasets.Audio,), ("audio",), "audio_column")
        if audio_column is not None or (image is None and audio is not None):
            self.kind, self.column = "audio", audio
        elif image is not None:
            self.kind, self.column = "image", image
        else:
            raise DataError(f"{self.name} has no image or audio column (columns {sorted(features)}); "
                            f"set data.load_datasets.image_column or audio_column")
        label = column(label_column, (datasets.ClassLabel,), ("label", "labels", "fine_label", "class"),
                       "label_column")
        if label is None:
            raise DataError(f"{self.name} has no label column (columns {sorted(features)}); "
                            f"set data.load_datasets.label_column")
        self.label_column = label
        feature = features[self.column]
        if isinstance(feature, (datasets.Image, datasets.Audio)):  # read the bytes; decoded by the pipeline
            ds = ds.cast_column(self.column, type(feature)(decode=False))
        values = ds[label]
        if isinstance(features[label], datasets.ClassLabel):
            self.classes = list(classes) if classes is not None else list(features[label].names)
            self.labels = [int(v) for v in values]
        else:
            self.classes = list(classes) if classes is not None else sorted({str(v) for v in values})
            index = {c: i for i, c in enumerate(self.classes)}
            unknown = sorted({str(v) for v in values} - set(index))
            if unknown:
                raise DataError(f"{self.name} has labels that the training split does not have: {unknown[:10]}")
            self.labels = [index[str(v)] for v in values]
        self.dataset = ds.select_columns([self.column])
        self.skipped: List[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Example:
        value = self.dataset[index][self.column]
        name = f"{self.name} row {index}"
        if isinstance(value, dict):  # {'bytes': ..., 'path': ...} of an undecoded Image or Audio
            payload = value.get("bytes") or value.get("path")
            if value.get("path") and not value.get("bytes"):
                name += f" ({value['path']})"
        else:
            payload = value
        if payload is None:
            raise BadExample(f"{name}: the {self.column!r} column is empty")
        return Example(payload, self.labels[index], name)


# ----------------------------------------------------------------------------------------------
# Tar shards (the WebDataset layout)


def expand_braces(pattern: str) -> List[str]:
    """``shard-{000..011}.tar`` -> the twelve names (zero-padded as written); ``{a,b}`` lists;
    then shell globs (``*``) against the file system."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match:
        body = match.group(1)
        span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if span:
            lo, hi = span.groups()
            items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
        else:
            items = body.split(",")
        return [name for item in items for name in
                expand_braces(pattern[:match.start()] + item + pattern[match.end():])]
    return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]


class TarShards:
    """Tar files of examples in the WebDataset layout: members ``<key>.<ext>`` grouped by key
    (``000017.jpg`` + ``000017.cls``), read in order without unpacking. An example has one
    image (jpg, jpeg, png, webp, ...) or audio (wav, flac, ...) member and a class member
    (``cls``: the class index as text; or ``txt``/``label``: a class name). The number of
    examples in each shard is counted once, from the tar headers, when the source is built.
    """

    def __init__(self, pattern: str, kind: Optional[str] = None, classes: Optional[Sequence[str]] = None):
        self.pattern = pattern
        self.shards = expand_braces(pattern)
        missing = [s for s in self.shards if not os.path.isfile(s)]
        if not self.shards or missing:
            raise DataError(f"no tar shards at {pattern!r}" + (f" (missing: {missing[:5]})" if missing else "")
                            + "; expected files such as /data/train-{000000..000099}.tar")
        self.counts, kinds, indices, names = [], set(), set(), set()
        for shard in self.shards:
            keys = 0
            for key, members in self._groups(shard, wanted=LABEL_MEMBERS):
                keys += 1
                exts = set(members)
                kinds |= {"image" for e in exts if "." + e in IMAGE_EXTENSIONS}
                kinds |= {"audio" for e in exts if "." + e in AUDIO_EXTENSIONS}
                if "cls" in members:
                    try:
                        indices.add(int(members["cls"].decode().strip()))
                    except ValueError:
                        raise DataError(f"{shard}: {key}.cls holds {members['cls'][:40]!r}; expected a class index") from None
                elif exts & {"txt", "label"}:
                    names.add(members.get("txt", members.get("label")).decode().strip())
                else:
                    raise DataError(f"{shard}: the example {key!r} has no label member (.cls with the class index, "
                                    f"or .txt / .label with its class name); it has {sorted(exts)}")
            self.counts.append(keys)
        if kind is None:
            if len(kinds) != 1:
                raise DataError(f"the shards {pattern!r} hold {'both images and audio' if kinds else 'neither images nor audio'}; "
                                f"expected one kind")
            kind = kinds.pop()
        self.kind = kind
        if classes is not None:
            self.classes = list(classes)
        elif indices and names:
            raise DataError(f"the shards {pattern!r} mix .cls class indices and .txt class names; expected one")
        elif names:
            self.classes = sorted(names)
        else:
            if min(indices) < 0:
                raise DataError(f"the shards {pattern!r} have a negative class index {min(indices)}")
            self.classes = [str(i) for i in range(max(indices) + 1)]
        self.skipped: List[str] = []

    def __len__(self) -> int:
        return sum(self.counts)

    @staticmethod
    def _groups(shard: str, wanted: Optional[frozenset] = None):
        """(key, {ext: bytes or None}) per example, in the shard's order; with ``wanted`` only
        those members are read (the others are None, skipped by seeking)."""
        try:
            with tarfile.open(shard, "r|*" if wanted is None else "r:*") as tar:
                key, members = None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    stem, _, ext = base.partition(".")
                    name = os.path.join(os.path.dirname(member.name), stem)
                    if key is not None and name != key:
                        yield key, members
                        members = {}
                    key, ext = name, ext.lower()
                    members[ext] = tar.extractfile(member).read() if wanted is None or ext in wanted else None
                if key is not None:
                    yield key, members
        except (tarfile.TarError, OSError, EOFError) as err:
            raise BadExample(f"{shard}: not a readable tar shard ({type(err).__name__}: {err})") from None

    def examples(self, shard_index: int, decode_from: int = 0):
        """The shard's examples as (key, members) in order; members are None before ``decode_from``
        (read past, not returned)."""
        for position, (key, members) in enumerate(self._groups(self.shards[shard_index])):
            yield key, (members if position >= decode_from else None)

    def example(self, shard_index: int, key: str, members: Dict[str, bytes]) -> Example:
        name = f"{self.shards[shard_index]}:{key}"
        exts = IMAGE_EXTENSIONS if self.kind == "image" else AUDIO_EXTENSIONS
        data = next((members[e] for e in members if "." + e in exts), None)
        if data is None:
            raise BadExample(f"{name}: no {self.kind} member (has {sorted(members)})")
        if "cls" in members:
            try:
                label = int(members["cls"].decode().strip())
            except ValueError:
                raise BadExample(f"{name}.cls: expected a class index, got {members['cls'][:40]!r}") from None
        else:
            text = members.get("txt", members.get("label")).decode().strip()
            if text not in self.classes:
                raise BadExample(f"{name}: the class name {text!r} is not one of the classes {self.classes}")
            label = self.classes.index(text)
        if self.classes is not None and not 0 <= label < len(self.classes):
            raise BadExample(f"{name}: class index {label} outside [0, {len(self.classes)})")
        return Example(data, label, name)
