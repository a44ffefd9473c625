"""Per-example transforms of the sources read from files, run in the DataLoader workers: images
through ``torchvision.transforms.v2``, audio through :mod:`~diffstride.data.audio`."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from diffstride.data import audio
from diffstride.data.sources import decode_audio, decode_image

__all__ = ["ImageTransform", "AudioTransform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageTransform:
    """Decode to RGB (or L), then ``torchvision.transforms.v2``: in training RandomResizedCrop to
    ``size`` + horizontal flip (+ RandAugment or TrivialAugmentWide), in evaluation Resize to
    ``size / crop_ratio`` + CenterCrop ``size``; returns a uint8 (C, size, size) tensor."""

    def __init__(self, size: int, channels: int, train: bool, augment: str = "random_resized_crop",
                 auto_augment: Optional[str] = None, crop_ratio: float = 0.875):
        from torchvision.transforms import v2  # torchvision: imported where images are read

        self.channels = channels
        steps: List[Any] = []
        if train and augment == "random_resized_crop":
            steps += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:  # evaluation, or training with augment = 'none'
            steps += [v2.Resize(int(round(size / crop_ratio)), antialias=True), v2.CenterCrop(size)]
        if train and auto_augment == "randaugment":
            steps.append(v2.RandAugment())
        elif train and auto_augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        steps.append(v2.PILToTensor())
        self.transform = v2.Compose(steps)

    def __call__(self, payload: Any, name: str) -> torch.Tensor:
        return self.transform(decode_image(payload, self.channels, name))


class AudioTransform:
    """Decode (soundfile), mix to mono, resample to ``sample_rate``, cut to ``length`` samples
    (random window in training, centre in evaluation, zero-padded when shorter), then
    ``'log_mel'`` (1, n_mels, frames) or ``'waveform'`` (1, length)."""

    def __init__(self, sample_rate: int, length: int, train: bool, features: str = "log_mel", n_mels: int = 64,
                 n_fft: int = 512, hop_length: Optional[int] = None):
        self.sample_rate, self.length, self.train, self.features = sample_rate, length, train, features
        self.log_mel = audio.LogMel(sample_rate, n_fft, hop_length, n_mels) if features == "log_mel" else None

    def shape(self) -> Tuple[int, ...]:
        if self.log_mel is None:
            return (1, self.length)
        return (1, self.log_mel.filters.shape[0], self.log_mel.frames(self.length))

    def __call__(self, payload: Any, name: str) -> torch.Tensor:
        samples, rate = decode_audio(payload, name)
        mono = audio.resample(audio.to_mono(samples), rate, self.sample_rate)
        clip = audio.fixed_length(torch.from_numpy(np.ascontiguousarray(mono))[None], self.length, self.train)
        if self.log_mel is None:
            return clip
        with torch.no_grad():
            return self.log_mel(clip)
