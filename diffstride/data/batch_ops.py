"""Operations on whole batches on the device, shared by the built-in sets and the file sources:
normalisation, and the batch's randomness (``augment_fn``, the reference's pairwise Mixup) drawn
from a keyed stream (:mod:`~diffstride.data.randomness`)."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import gin
import torch
import torch.nn.functional as F

from diffstride.data.randomness import seeded_on

__all__ = ["Normalize", "augment", "augment_and_mix", "mixup_pairs"]


class Normalize:
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` in [0, 1] units for uint8 images."""

    def __init__(self, mean, std, device, dtype: torch.dtype = torch.uint8, spatial_dims: int = 2):
        scale = 255.0 if dtype == torch.uint8 else 1.0
        shape = (1, -1) + (1,) * spatial_dims
        self.mean = torch.tensor(mean, device=device).view(shape) * scale
        self.std = torch.tensor(std, device=device).view(shape) * scale

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


def augment_and_mix(images: torch.Tensor, labels: torch.Tensor, augment_fn: Optional[Callable], mixup_alpha: float,
                    key: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch's device-side randomness, drawn from a stream keyed by ``key`` (the batch's
    (seed, epoch, batch, rank): :mod:`~diffstride.data.randomness`): ``augment_fn``, then the
    reference's pairwise Mixup when ``mixup_alpha > 0``. The run's global generators are untouched."""
    if augment_fn is None and mixup_alpha <= 0:
        return images, labels
    with seeded_on(images.device, key):
        if augment_fn is not None:
            images = augment_fn(images)
        if mixup_alpha > 0:
            images, labels = mixup_pairs(images, labels, mixup_alpha)
    return images, labels


def mixup_pairs(images: torch.Tensor, labels: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference's Mixup: consecutive pairs (0, 1), (2, 3), ... each give one example.

    ``λ ~ Beta(α, α)`` per pair; image ``λ·x0 + (1-λ)·x1``, label ``λ·y0 + (1-λ)·y1``.
    """
    weight = torch.distributions.Beta(
        torch.tensor(alpha, device=images.device), torch.tensor(alpha, device=images.device)
    ).sample((images.shape[0] // 2,))
    wi = weight.view(-1, *([1] * (images.dim() - 1)))
    wl = weight[:, None]
    return images[0::2] * wi + images[1::2] * (1 - wi), labels[0::2] * wl + labels[1::2] * (1 - wl)


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
