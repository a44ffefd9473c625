"""Data read from files (issue "any data, any scale"): image and audio folders, torchvision and
Hugging Face datasets, tar shards; the pipeline's determinism (workers, resume, ranks); bad data.

Everything is generated here, offline: images of varying sizes and modes (JPEG, 8- and 16-bit
PNG, palette, RGBA), tones as wav/flac, a Hugging Face DatasetDict saved to disk, tar shards in
the WebDataset layout, MNIST's idx files for ``torchvision.datasets.MNIST``.
"""
import struct

import numpy as np
import pytest
import torch

from diffstride import data
from diffstride.data import loader, transforms
from diffstride.data import sources

from .conftest import CLASSES, _shards, _tone


def _batches(ds, epochs=(0,), start=0):
    out = []
    for epoch in epochs:
        for images, labels in ds.train.batches(ds.train.order(epoch), start=start if epoch == epochs[0] else 0):
            out.append((images, labels))
    return out


def _load(name, root, **kwargs):
    kwargs.setdefault("batch_size", 6)
    kwargs.setdefault("image_size", 24)
    kwargs.setdefault("num_workers", 0)
    return data.load_datasets(name, data_dir=str(root), seed=kwargs.pop("seed", 3), **kwargs)


# ----------------------------------------------------------------------------------------------
# Decoding


def test_images_of_every_mode_become_what_the_model_takes(tmp_path):
    from PIL import Image

    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "16bit.png")
    decoded = sources.decode_image(str(tmp_path / "16bit.png"), 1, "16bit.png")
    # 16-bit values scaled to 8 bits by the type's range, not clipped at 255
    np.testing.assert_array_equal(np.asarray(decoded), np.round(ramp / 65535.0 * 255).astype(np.uint8))
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(sources.decode_image(str(tmp_path / "p.png"), 3, "p")),
                                  np.asarray(palette.convert("RGB")))
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(sources.decode_image(str(tmp_path / "rgba.png"), 3, "rgba")), rgb)
    gray = sources.decode_image(Image.fromarray(rgb[..., 0]), 3, "gray")
    assert gray.mode == "RGB" and np.array_equal(np.asarray(gray)[..., 2], rgb[..., 0])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(sources.BadExample, match=r"bad\.jpg: cannot be decoded as an image"):
        sources.decode_image(str(tmp_path / "bad.jpg"), 3, "bad.jpg")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(sources.BadExample, match=r"bad\.wav: cannot be read as audio"):
        sources.decode_audio(str(tmp_path / "bad.wav"), "bad.wav")


def test_mel_filters_and_log_mel_match_librosa():
    librosa = pytest.importorskip("librosa")
    from diffstride.data import audio

    for rate, n_fft, n_mels in ((16000, 512, 64), (22050, 1024, 40), (8000, 256, 20)):
        ours = audio.mel_filters(rate, n_fft, n_mels)
        theirs = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, htk=False, norm="slaney", dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-12)
    wave = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    theirs = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=512, hop_length=128, n_mels=64, center=True,
                                            pad_mode="constant", power=2.0)
    ours = audio.LogMel(16000, 512, 128, 64)(torch.from_numpy(wave)).double()
    # float32 STFT: relative agreement of the power, compared in the log domain
    np.testing.assert_allclose(ours.numpy(), np.log(theirs + 1e-6), atol=2e-4)


def test_resampling_keeps_the_pitch():
    from diffstride.data import audio

    tone = _tone(22050, 1.0, 440.0)
    out = audio.resample(tone, 22050, 16000)
    assert out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1  # bins of 1 Hz


# ----------------------------------------------------------------------------------------------
# Sources agree with one another and with the files


def _eval_tensors(ds):
    images, labels = zip(*list(ds.test))
    return torch.cat(images), torch.cat(labels)


def test_imagefolder_reads_every_file_with_its_class(files):
    ds = _load("imagefolder", files["root"] / "images")
    assert ds.num_classes == 3 and ds.image_shape == (3, 24, 24) and len(ds.train) == 36 // 6
    images, labels = _eval_tensors(ds)
    assert images.shape == (12, 3, 24, 24)
    assert labels.tolist() == [label for _, label in files["images"]["val"]]
    # the evaluation transform, computed here from the file: Resize(24 / 0.875) + CenterCrop(24), normalised
    from PIL import Image
    from torchvision.transforms import v2

    path, _ = files["images"]["val"][0]
    expected = v2.Compose([v2.Resize(27, antialias=True), v2.CenterCrop(24), v2.PILToTensor()])(
        Image.open(path).convert("RGB")).float() / 255.0
    mean, std = torch.tensor(transforms.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(transforms.IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(images[0], (expected - mean) / std, rtol=0, atol=1e-5)


def test_hugging_face_dataset_saved_to_disk_matches_the_folder(files, tmp_path):
    datasets = pytest.importorskip("datasets")

    def split(name):
        rows = files["images"][name]
        return datasets.Dataset.from_dict(
            {"picture": [p for p, _ in rows], "species": [y for _, y in rows]},
            features=datasets.Features({"picture": datasets.Image(), "species": datasets.ClassLabel(names=list(CLASSES))}))

    datasets.DatasetDict({"train": split("train"), "test": split("val")}).save_to_disk(str(tmp_path / "hf"))
    hf = data.load_datasets(f"hf:{tmp_path / 'hf'}", batch_size=6, image_size=24, num_workers=0, seed=3)
    folder = _load("imagefolder", files["root"] / "images")
    assert hf.num_classes == 3
    for a, b in zip(_eval_tensors(hf), _eval_tensors(folder)):
        assert torch.equal(a, b)
    for (xa, ya), (xb, yb) in zip(_batches(hf), _batches(folder)):  # same (seed, epoch, index): same crops
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(sources.DataError, match=r"has no column 'label' \(data.load_datasets.label_column\); "
                                                r"its columns are \['picture', 'species'\]"):
        data.load_datasets(f"hf:{tmp_path / 'hf'}", label_column="label", num_workers=0)
    with pytest.raises(sources.DataError, match=r"has no split 'validation'; it has \['test', 'train'\]: name the "
                                                r"two to use, e.g. data.load_datasets.splits = \('train', 'test'\)"):
        data.load_datasets(f"hf:{tmp_path / 'hf'}", splits=("train", "validation"), num_workers=0)


def _write_idx(path, array):
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_dataset_by_class_name(tmp_path):
    rng = np.random.default_rng(2)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    made = {}
    for prefix, n in (("train", 20), ("t10k", 8)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        made[prefix] = images, labels
    ds = data.load_datasets("torchvision:MNIST", data_dir=str(tmp_path), download=False, batch_size=4, image_size=28,
                            channels=1, augment="none", crop_ratio=1.0, mean=(0.0,), std=(1.0,), num_workers=0)
    assert ds.num_classes == 10 and ds.image_shape == (1, 28, 28)
    images, labels = _eval_tensors(ds)
    assert labels.tolist() == made["t10k"][1].tolist()
    torch.testing.assert_close(images[:, 0] * 255, torch.from_numpy(made["t10k"][0]).float(), rtol=0, atol=1e-3)
    with pytest.raises(sources.DataError, match="torchvision.datasets has no dataset 'Imagenette2'"):
        data.load_datasets("torchvision:Imagenette2", data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(sources.DataError, match=r"torchvision.datasets.SVHN\(root=.*could not be loaded"):
        data.load_datasets("torchvision:SVHN", data_dir=str(tmp_path), download=False, num_workers=0)


def test_tar_shards_stream_the_same_examples(files, tmp_path):
    _shards(tmp_path, files["images"]["train"], "train", 7)  # 36 examples in 6 shards (the last has 1)
    _shards(tmp_path, files["images"]["val"], "val", 5)
    name = f"wds:{tmp_path}/{{split}}-{{000..005}}.tar"
    with pytest.raises(sources.DataError, match="no tar shards"):
        data.load_datasets(name.replace("train", "x"), num_workers=0)  # the val pattern {000..005} has missing files
    name = f"wds:{tmp_path}/{{split}}-*.tar"
    ds = _load(name, tmp_path)
    assert ds.num_classes == 3 and len(ds.train) == 36 // 6
    # evaluation reads the shards in order: the folder's order, the same pixels
    for a, b in zip(_eval_tensors(ds), _eval_tensors(_load("imagefolder", files["root"] / "images"))):
        assert torch.equal(a, b)
    # training: the same batches with 0 and 2 workers, every example once per epoch
    zero = _batches(ds, epochs=(0, 1))
    two = _batches(_load(name, tmp_path, num_workers=2), epochs=(0, 1))
    assert len(zero) == 12 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(zero, two))
    # a resumed epoch reads the batches it had not trained on
    tail = _batches(_load(name, tmp_path, num_workers=2), epochs=(1,), start=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, zero[6 + 4:]))


def test_tar_shards_are_split_between_ranks(files, tmp_path):
    _shards(tmp_path, files["images"]["train"], "train", 6)  # 6 shards of 6
    _shards(tmp_path, files["images"]["val"], "val", 6)
    shards = sources.TarShards(f"{tmp_path}/train-*.tar")
    seen = []
    for rank in range(2):
        stream = loader.ShardStream(shards, lambda payload, name: name, 0, rank, 2, 18, 4, train=True)
        stream.epoch = 1
        seen.append([x for x, _ in stream])
    assert len(seen[0]) == len(seen[1]) == 18 and not set(seen[0]) & set(seen[1])


def test_audiofolder_clips_as_log_mel_or_waveform(files):
    ds = _load("audiofolder", files["root"] / "audio", sample_rate=8000, clip_seconds=0.5, n_mels=32)
    assert ds.num_classes == 3 and ds.image_shape == (1, 32, 4000 // 128 + 1)
    images, labels = _eval_tensors(ds)
    assert images.shape == (6, 1, 32, 32) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    wave = _load("audiofolder", files["root"] / "audio", sample_rate=8000, clip_seconds=0.5,
                 audio_features="waveform")
    assert wave.image_shape == (1, 4000)
    clips, _ = _eval_tensors(wave)
    # the first file: a 0.3 s tone at 8 kHz, padded with zeros to 0.5 s; the second is 0.6 s, cut in its centre
    expected = torch.from_numpy(_tone(8000, 0.3, 300.0))
    torch.testing.assert_close(clips[0, 0, :2400], expected, rtol=0, atol=1e-4)
    assert clips[0, 0, 2400:].abs().max() == 0
    # log-mel of the clip: the front-end on the waveform
    from diffstride.data import audio
    torch.testing.assert_close(images[0], audio.LogMel(8000, 512, None, 32)(clips[0]), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Determinism and sharding of the map-style pipeline


def test_workers_never_change_a_batch_and_a_resume_continues_the_epoch(files):
    root = files["root"] / "images"
    zero = _batches(_load("imagefolder", root, auto_augment="trivialaugment"), epochs=(0, 1))
    two = _batches(_load("imagefolder", root, auto_augment="trivialaugment", num_workers=2), epochs=(0, 1))
    assert len(zero) == 12
    for (xa, ya), (xb, yb) in zip(zero, two):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(zero[0][0], zero[6][0])  # another epoch: another order
    # each example's randomness is its own (seed, epoch, index): the same key, the same crop; another epoch, another
    dataset = _load("imagefolder", root).train.loader.loader.dataset
    assert torch.equal(dataset[(0, 5)][0], dataset[(0, 5)][0]) and not torch.equal(dataset[(0, 5)][0], dataset[(1, 5)][0])
    resumed = _batches(_load("imagefolder", root, auto_augment="trivialaugment", num_workers=2), epochs=(0,), start=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, zero[4:6])) and len(resumed) == 2
    other_seed = _batches(_load("imagefolder", root, auto_augment="trivialaugment", seed=4))
    assert not torch.equal(other_seed[0][0], zero[0][0])


def test_mixup_and_batch_augmentation_draw_from_their_own_keyed_stream(files):
    """Mixup's weights and ``augment_fn`` are drawn per batch from (seed, epoch, batch, rank):
    the same batches with 0 or 2 workers, whatever else draws from torch's global generator
    between them, and from a resume; another seed gives other draws."""
    root = files["root"] / "images"
    options = dict(mixup_alpha=0.2, augment_fn=data.augment)

    def batches(workers, start=0, seed=3, draw_between=False):
        ds = _load("imagefolder", root, num_workers=workers, seed=seed, **options)
        out = []
        for epoch in (0, 1):
            for images, labels in ds.train.batches(ds.train.order(epoch), start=start if epoch == 0 else 0):
                out.append((images, labels))
                if draw_between:
                    torch.rand(100)  # what a DataLoader iterator or a user's code may do
        return out

    zero, two = batches(0), batches(2, draw_between=True)
    assert len(zero) == 6 and zero[0][0].shape[0] == 6  # 6 examples a batch, each a mixed pair of images
    for (xa, ya), (xb, yb) in zip(zero, two):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(zero[0][1], zero[0][1].round())  # the labels are mixed
    resumed = batches(2, start=1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, zero[1:]))
    before = torch.get_rng_state()
    other = batches(0, seed=4)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
    assert not torch.equal(other[0][1], zero[0][1])


def test_the_in_memory_sets_key_mixup_and_augmentation_per_batch():
    """The built-in sets (on the device): the same keyed draws, whatever draws from the global
    generator between batches."""
    split = data.Split(torch.randint(0, 255, (64, 1, 12, 12), dtype=torch.uint8), torch.arange(64) % 4)
    normalize = data.Normalize((0.5,), (0.25,), torch.device("cpu"))
    train = data.InMemoryTrainBatches(split, 4, 8, normalize, data.augment, 0.2, seed=5)
    order = train.order(1)
    plain = list(train.batches(order))
    disturbed = []
    for batch in train.batches(order):
        disturbed.append(batch)
        torch.rand(10)
    assert len(plain) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, disturbed))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain[2:], train.batches(order, start=2)))
    shifted = list(data.InMemoryTrainBatches(split, 4, 8, normalize, data.augment, 0.2, seed=6).batches(order))
    assert not torch.equal(shifted[0][1], plain[0][1])


def test_ranks_share_each_batch_and_see_each_example_once():
    size, batch = 103, 8
    samplers = [loader.EpochBatchSampler(size, batch, rank, 2, seed=5, shuffle=True) for rank in range(2)]
    for sampler in samplers:
        sampler.epoch = 2
    per_rank = [list(s) for s in samplers]
    assert len(per_rank[0]) == len(per_rank[1]) == 103 // 8
    flat = [i for rank in per_rank for b in rank for _, i in b]
    assert len(flat) == len(set(flat)) == 12 * 8  # the last 103 - 96 examples of the order left out
    assert all(len(b) == 4 for rank in per_rank for b in rank)
    evaluation = [list(loader.EpochBatchSampler(size, batch, rank, 2, 5, shuffle=False)) for rank in range(2)]
    assert sorted(i for rank in evaluation for b in rank for _, i in b) == list(range(size))


# ----------------------------------------------------------------------------------------------
# Bad data


def test_bad_data_is_named_before_training(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.png")
    (tmp_path / "train" / "a" / ".DS_Store").write_bytes(b"")  # hidden: ignored
    (tmp_path / "train" / "a" / "notes.txt").write_text("hello")
    with pytest.raises(sources.DataError, match=r"notes\.txt is not an image \(expected one of \.jpg.*skip_bad_files"):
        _load("imagefolder", tmp_path, batch_size=2)
    ds = _load("imagefolder", tmp_path, batch_size=2, skip_bad_files=True)
    assert ds.train.skipped == 1
    (tmp_path / "train" / "a" / "notes.txt").unlink()
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(sources.DataError, match=r"the class folder .*train/c has no image files"):
        _load("imagefolder", tmp_path, batch_size=2)
    (tmp_path / "train" / "c").rmdir()
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(sources.DataError, match=r"has no val/ split folder \(it has \['elsewhere', 'train'\]\)"):
        _load("imagefolder", tmp_path, batch_size=2)
    with pytest.raises(ValueError, match="data.load_datasets.audio_features must be 'log_mel' or 'waveform', but got 'mfcc'"):
        _load("audiofolder", tmp_path, audio_features="mfcc")
