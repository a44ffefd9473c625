"""Audio front-ends for the training system: mono clips resampled and cut to a fixed length, and
a log-mel spectrogram (torch only), for the 2-D ResNets; or the raw waveform for the 1-D ones.

The mel filters are librosa's defaults (Slaney's mel scale and area normalisation,
``librosa.filters.mel(htk=False, norm='slaney')``); ``tests/training/test_files.py`` (test_mel_filters_and_log_mel_match_librosa) checks them
against librosa.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

import numpy as np
import torch

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filters", "LogMel", "to_mono", "resample", "fixed_length"]


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int = 64, fmin: float = 0.0,
                fmax: Optional[float] = None) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), each of unit area (Slaney)."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]


class LogMel(torch.nn.Module):
    """``log(mel power spectrogram + eps)`` of (..., samples) waveforms -> (..., n_mels, frames).

    A Hann window of ``n_fft`` samples every ``hop_length`` samples, centred frames (zero
    padding), the power spectrum through :func:`mel_filters`.
    """

    def __init__(self, sample_rate: int, n_fft: int = 512, hop_length: Optional[int] = None, n_mels: int = 64,
                 fmin: float = 0.0, fmax: Optional[float] = None, eps: float = 1e-6):
        super().__init__()
        self.n_fft, self.hop_length, self.eps = n_fft, hop_length or n_fft // 4, eps
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filters(sample_rate, n_fft, n_mels, fmin, fmax)).float(),
                             persistent=False)

    def frames(self, samples: int) -> int:
        return samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        lead = waveform.shape[:-1]
        spec = torch.stft(waveform.reshape(-1, waveform.shape[-1]), self.n_fft, self.hop_length, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.filters, power)
        return torch.log(mel + self.eps).reshape(*lead, *mel.shape[-2:])


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) as soundfile returns them -> float32 (frames,), the channels' mean."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return samples
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def fixed_length(samples: torch.Tensor, length: int, train: bool) -> torch.Tensor:
    """A clip of exactly ``length`` samples: a random window in training (torch's generator,
    seeded per example by the pipeline), the centre one in evaluation; shorter clips are padded
    with zeros at the end."""
    n = samples.shape[-1]
    if n < length:
        return torch.nn.functional.pad(samples, (0, length - n))
    start = int(torch.randint(0, n - length + 1, ())) if train else (n - length) // 2
    return samples[..., start:start + length]
