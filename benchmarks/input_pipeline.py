"""The training input pipeline's throughput on ImageNet-like JPEGs (a benchmark, not a test).

    python benchmarks/input_pipeline.py [--images 256] [--rounds 5] [--workers 0 1 2] [--size 224]

Generates a folder of JPEGs of about 500x375 (ImageNet's typical size; smooth random content, so
the files weigh what photographs do), then measures examples per second of one training epoch at
``--size``² through

- ``diffstride``: ``data.load_datasets('imagefolder', ...)``'s training batches, as the loop
  reads them (decoded and cropped in the workers, normalised in the training process, per-example
  seeding for determinism, sharding);
- ``plain torchvision``: ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the same
  transforms (RandomResizedCrop + flip, then ToDtype + Normalize in the workers), shuffled;

with 0, 1 and 2 workers, the two timed in turns (one epoch of each per round) so that a slow
spell of the machine hits both; the ratio is the median of the per-round ratios. Then, on
32x32 images (CIFAR's size), the in-memory path of the built-in sets against the same images
read through the file pipeline, to show which is faster for small data held in memory.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import machine_header  # noqa: E402
from diffstride import data  # noqa: E402


def make_folder(root: str, images: int, size=(500, 375), classes: int = 4, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", images), ("val", max(classes, images // 8))):
        for i in range(n):
            folder = os.path.join(root, split, f"class{i % classes}")
            os.makedirs(folder, exist_ok=True)
            coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            noise = rng.integers(-12, 13, (h, w, 3))
            image = Image.fromarray(np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8))
            image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def ours(root: str, workers: int, batch: int, size: int):
    ds = data.load_datasets("imagefolder", data_dir=root, batch_size=batch, image_size=size, num_workers=workers,
                            seed=0)
    epoch = [0]

    def run() -> int:
        seen = 0
        for images, _ in ds.train.batches(ds.train.order(epoch[0])):
            seen += images.shape[0]
        epoch[0] += 1
        return seen

    return run


def plain(root: str, workers: int, batch: int, size: int):
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=transform)
    extra = dict(persistent_workers=True, prefetch_factor=2) if workers else {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, **extra)

    def run() -> int:
        seen = 0
        for images, _ in loader:
            seen += images.shape[0]
        return seen

    return run


def in_memory_vs_files(root: str, images: int, batch: int, rounds: int):
    """CIFAR-sized images: the built-in in-memory path (uint8 tensors, batched ops) against the
    same images as PNG files through the pipeline (augment 'none', 0 workers)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, images)
    for split in ("train", "val"):
        for i in range(images if split == "train" else 10):
            folder = os.path.join(root, split, f"c{labels[i]}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels[i]).save(os.path.join(folder, f"{i:05d}.png"))
    split = data.Split(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    normalize = data.Normalize(data.CIFAR_MEAN, data.CIFAR_STD, torch.device("cpu"))
    memory = data.TrainBatches(split, 10, batch, normalize, data.augment, 0.0)
    files = data.load_datasets("imagefolder", data_dir=root, batch_size=batch, image_size=32, augment="none",
                               crop_ratio=1.0, num_workers=0, augment_fn=data.augment)

    def run_memory():
        return sum(x.shape[0] for x, _ in memory.batches(memory.order(0)))

    def run_files():
        return sum(x.shape[0] for x, _ in files.train.batches(files.train.order(0)))

    return timed_in_turns([run_memory, run_files], rounds)


def timed_in_turns(fns, rounds: int):
    """Examples per second of each function per round (after one warm-up round), in turns."""
    for fn in fns:
        fn()
    rates = [[] for _ in fns]
    for _ in range(rounds):
        for fn, bucket in zip(fns, rates):
            start = time.perf_counter()
            seen = fn()
            bucket.append(seen / (time.perf_counter() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images generated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_header(torch.device("cpu"), args.threads))
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        make_folder(os.path.join(root, "jpeg"), args.images)
        print(f"# {args.images} training JPEGs of 500x375 generated in {time.perf_counter() - started:.0f} s; "
              f"batch {args.batch}, {args.size}x{args.size}, {args.rounds} rounds after a warm-up epoch")
        print(f"{'workers':>7}  {'diffstride ex/s':>15}  {'plain ex/s':>10}  {'ratio (median, min-max)':>24}")
        for workers in args.workers:
            fns = [ours(os.path.join(root, "jpeg"), workers, args.batch, args.size),
                   plain(os.path.join(root, "jpeg"), workers, args.batch, args.size)]
            a, b = timed_in_turns(fns, args.rounds)
            ratios = [x / y for x, y in zip(a, b)]
            print(f"{workers:>7}  {statistics.median(a):>15.1f}  {statistics.median(b):>10.1f}  "
                  f"{statistics.median(ratios):>9.3f}x ({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
        memory, files = in_memory_vs_files(os.path.join(root, "small"), 2048, 128, args.rounds)
        ratios = [x / y for x, y in zip(memory, files)]
        print(f"# 32x32, 2048 images, batch 128, pad-crop-flip on the batch: in memory {statistics.median(memory):.0f} ex/s, "
              f"as PNG files through the pipeline (0 workers) {statistics.median(files):.0f} ex/s: in memory "
              f"{statistics.median(ratios):.1f}x faster")


if __name__ == "__main__":
    main()
