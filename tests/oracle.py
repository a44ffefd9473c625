"""The slow, obvious oracle: the reference's layers written directly with torch.fft (google-research/diffstride's pooling.py).

Independent of ``diffstride.functional`` on purpose: FFT, mask, crop by ``nonzero``, inverse FFT,
exactly in the order the reference computes them. Used in float64 by the tests and in float32
by ``benchmarks/pooling.py`` as the "direct torch.fft implementation" that existing ports use.
"""
import math

import torch


def _clip(v, lo, hi):
    """clip_by_value with TensorFlow's gradient: passes where lo <= v <= hi (inclusive)."""
    inside = torch.ones_like(v, dtype=torch.bool)
    if lo is not None:
        inside &= v >= lo
    if hi is not None:
        inside &= v <= hi
    return torch.where(inside, v, v.clamp(lo, hi).detach())


def _maximum(v, floor):
    return torch.where(v >= floor, v, torch.full_like(v, floor))


def _mask(threshold, smoothness, positions):
    return _clip((1.0 / smoothness) * (smoothness + threshold - positions), 0.0, 1.0)


def _height_positions(height, dtype, device):
    r = torch.arange(height // 2 + height % 2, dtype=dtype, device=device)
    return torch.fft.fftshift(torch.cat([torch.flip(r[height % 2:], dims=[0]), r]))


def _min_stride(size, smoothness, dtype, device):
    n = torch.tensor(float(size), dtype=torch.float32)
    return (n / (n - torch.tensor(smoothness, dtype=torch.float32))).to(dtype).to(device)


def diffstride_fft(x, strides, smoothness_factor=4.0, cropping=True, lower=None, upper=None):
    """DiffStride 2-D on (N, C, H, W) (or 1-D on (N, C, L)) with ``strides`` a tensor (2,), (1,)."""
    one_d = x.dim() == 3
    if one_d:
        x = x[:, :, None, :]
    height, width = x.shape[-2:]
    dtype, device = strides.dtype, strides.device
    min_h = _min_stride(height, smoothness_factor, dtype, device)
    min_w = _min_stride(width, smoothness_factor, dtype, device)
    # The reference assigns max(S, min) to its variable, then reads it: value clamped, identity gradient.
    if one_d:
        s_w = strides[0] + (torch.maximum(strides[0], min_w) - strides[0]).detach()
        s_h = None
    elif strides.numel() == 1:
        floor = torch.maximum(min_h, min_w)
        s_h = s_w = strides[0] + (torch.maximum(strides[0], floor) - strides[0]).detach()
    else:
        s_h = strides[0] + (torch.maximum(strides[0], min_h) - strides[0]).detach()
        s_w = strides[1] + (torch.maximum(strides[1], min_w) - strides[1]).detach()
    lo = 1.0 if lower is None else lower
    spectrum = torch.fft.rfft2(x) if not one_d else torch.fft.rfft(x)
    s_w = _clip(s_w, lo, upper)
    w_star = _maximum(torch.full_like(s_w, width) / s_w, 2.0)
    w_mask = _mask(w_star / 2 + 1, smoothness_factor, torch.arange(width // 2 + 1, dtype=dtype, device=device))
    spectrum = spectrum * w_mask.to(spectrum.dtype)
    if not one_d:
        s_h = _clip(s_h, lo, upper)
        h_star = _maximum(torch.full_like(s_h, height) / s_h, 2.0)
        h_mask = _mask(h_star / 2, smoothness_factor, _height_positions(height, dtype, device))
        spectrum = spectrum * h_mask.to(spectrum.dtype)[:, None]
    if cropping:
        cols = torch.nonzero(w_mask.detach() > 0)[:, 0]
        spectrum = spectrum.index_select(-1, cols)
        if not one_d:
            rows = torch.nonzero(h_mask.detach() > 0)[:, 0]
            spectrum = spectrum.index_select(-2, rows)
    if one_d:
        return torch.fft.irfft(spectrum)[:, :, 0, :]
    return torch.fft.irfft2(spectrum)


def fixed_spectral_fft(x, strides):
    """FixedSpectralPooling on (N, C, H, W) (or (N, C, L) with one stride)."""
    if x.dim() == 3:
        out = max(int(math.floor(x.shape[-1] / strides[0])), 2)
        return torch.fft.irfft(torch.fft.rfft(x)[..., : out // 2 + 1], n=out)
    height, width = x.shape[-2:]
    h = max(2 * (int(math.floor(height / strides[0])) // 2), 2)
    w = max(int(math.floor(width / strides[1])), 2)
    spectrum = torch.fft.rfft2(x)
    spectrum = torch.cat([spectrum[..., : h // 2, :], spectrum[..., height - h // 2:, :]], dim=-2)
    return torch.fft.irfft2(spectrum[..., : w // 2 + 1], s=(h, w))


def diffstride_fft_3d(x, strides, smoothness_factor=4.0, cropping=True):
    """DiffStride 3-D on (N, C, D, H, W), ``strides`` a tensor (3,) or shared (1,): depth and
    height masked as the 2-D height (centred positions), width as the 2-D width (the README's 3-D rule)."""
    dtype, device = strides.dtype, strides.device
    sizes = x.shape[-3:]
    mins = [_min_stride(n, smoothness_factor, dtype, device) for n in sizes]
    if strides.numel() == 1:
        floor = torch.maximum(torch.maximum(mins[0], mins[1]), mins[2])
        s = strides[0] + (torch.maximum(strides[0], floor) - strides[0]).detach()
        per_axis = [s, s, s]
    else:
        per_axis = [strides[i] + (torch.maximum(strides[i], mins[i]) - strides[i]).detach() for i in range(3)]
    spectrum = torch.fft.rfftn(x, dim=(-3, -2, -1))
    masks = []
    for axis, (n, s) in enumerate(zip(sizes, per_axis)):
        s = _clip(s, 1.0, None)
        star = _maximum(torch.full_like(s, n) / s, 2.0)
        if axis == 2:
            m = _mask(star / 2 + 1, smoothness_factor, torch.arange(n // 2 + 1, dtype=dtype, device=device))
        else:
            m = _mask(star / 2, smoothness_factor, _height_positions(n, dtype, device))
        shape = [1, 1, 1]
        shape[axis] = -1
        spectrum = spectrum * m.to(spectrum.dtype).view(shape)
        masks.append(m)
    if cropping:
        for axis, m in enumerate(masks):
            spectrum = spectrum.index_select(axis - 3, torch.nonzero(m.detach() > 0)[:, 0])
    return torch.fft.irfftn(spectrum, s=(spectrum.shape[-3], spectrum.shape[-2], 2 * (spectrum.shape[-1] - 1)),
                            dim=(-3, -2, -1))


def fixed_spectral_fft_3d(x, strides):
    """FixedSpectralPooling 3-D on (N, C, D, H, W)."""
    sizes = x.shape[-3:]
    spectrum = torch.fft.rfftn(x, dim=(-3, -2, -1))
    out = []
    for axis in range(2):
        n = sizes[axis]
        k = max(2 * (int(math.floor(n / strides[axis])) // 2), 2)
        index = torch.tensor(list(range(k // 2)) + list(range(n - k // 2, n)))
        spectrum = spectrum.index_select(axis - 3, index)
        out.append(k)
    w = max(int(math.floor(sizes[2] / strides[2])), 2)
    return torch.fft.irfftn(spectrum[..., : w // 2 + 1], s=(out[0], out[1], w), dim=(-3, -2, -1))
