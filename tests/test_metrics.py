"""Shift consistency (diffstride.metrics): shifts against torch.roll and an explicit pad-and-crop,
and the score of models whose answer follows from theory."""
import math

import pytest
import torch

from diffstride import metrics


def _pad_crop(x: torch.Tensor, s) -> torch.Tensor:
    """One example moved by ``s`` with zero fill, written out slice by slice (the obvious way)."""
    out = torch.zeros_like(x)
    src, dst = [slice(None)], [slice(None)]
    for shift, size in zip(s, x.shape[1:]):
        src.append(slice(max(0, -shift), size - max(0, shift)))
        dst.append(slice(max(0, shift), size - max(0, -shift)))
    out[tuple(dst)] = x[tuple(src)]
    return out


@pytest.mark.parametrize("spatial", [(11,), (7, 9), (5, 6, 8)])
def test_shifts_match_roll_and_an_explicit_pad_and_crop_per_example(spatial):
    x = torch.randn(6, 2, *spatial)
    shifts = torch.randint(-4, 5, (6, len(spatial)))
    circular = metrics.shift(x, shifts, mode="circular")
    zeros = metrics.shift(x, shifts, mode="zeros")
    for n in range(6):
        s = shifts[n].tolist()
        assert torch.equal(circular[n], torch.roll(x[n], s, dims=tuple(range(1, len(spatial) + 1))))
        assert torch.equal(zeros[n], _pad_crop(x[n], s))


def test_a_circularly_invariant_model_scores_one_and_a_zero_shift_always_agrees():
    x = torch.randn(64, 3, 12, 12)
    w = torch.randn(3, 5)
    invariant = lambda t: t.mean((2, 3)) @ w  # noqa: E731 - global average pooling, then a linear map
    assert metrics.shift_consistency(invariant, x, max_shift=5, mode="circular") == 1.0
    reads_one_pixel = lambda t: torch.stack([t[:, 0, 0, 0], -t[:, 0, 0, 0]], -1)  # noqa: E731
    assert metrics.shift_consistency(reads_one_pixel, x, max_shift=0) == 1.0


@pytest.mark.parametrize("ndim,max_shift", [(1, 3), (2, 1), (2, 2), (3, 1)])
def test_a_model_that_reads_one_pixel_scores_what_theory_says(ndim, max_shift):
    # On i.i.d. signs with circular shifts, the two shifts coincide with probability (2m+1)^-ndim
    # (the predictions agree); otherwise the pixel read is another independent sign (agree half
    # the time). 40,000 examples: the standard error is under 0.0025.
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (40_000, 1) + (9,) * ndim, generator=gen).float() * 2 - 1
    corner = (slice(None), 0) + (0,) * ndim
    model = lambda t: torch.stack([t[corner], -t[corner]], -1)  # noqa: E731 - class = the sign of one pixel
    same = (2 * max_shift + 1) ** -ndim
    expected = same + (1 - same) / 2
    score = metrics.shift_consistency(model, x, max_shift=max_shift, generator=torch.Generator().manual_seed(2))
    assert abs(score - expected) < 4 * math.sqrt(expected * (1 - expected) / 40_000)


def test_zero_fill_loses_what_leaves_the_frame():
    # A model that reads the last sample of all-ones series answers class 0 until a shift of -1
    # moves the content left and a zero comes in at the end (class 1): with max_shift 1 the two
    # shifts of a series (each of -1, 0, 1 with probability 1/3) disagree when exactly one of
    # them is -1: probability 2 * 1/3 * 2/3 = 4/9.
    x = torch.ones(30_000, 1, 10)
    model = lambda t: torch.stack([t[:, 0, -1], 0.5 * torch.ones_like(t[:, 0, -1])], -1)  # noqa: E731
    score = metrics.shift_consistency(model, x, max_shift=1, mode="zeros", generator=torch.Generator().manual_seed(3))
    assert abs(score - (1 - 4 / 9)) < 0.02
    assert metrics.shift_consistency(model, x[:500], max_shift=1, mode="circular") == 1.0


def test_batches_from_an_iterable_of_pairs_count_every_example():
    x = torch.randn(10, 1, 8)
    batches = [(x[:4], None), (x[4:], None)]
    assert metrics.shift_consistency(lambda t: t.mean(-1), batches, max_shift=2) == 1.0


def test_bad_arguments_are_named():
    model = lambda t: t.flatten(1)  # noqa: E731
    with pytest.raises(ValueError, match=r"max_shift must be an integer >= 0, but got -1"):
        metrics.shift_consistency(model, torch.rand(2, 1, 8), max_shift=-1)
    with pytest.raises(ValueError, match=r"mode must be one of \('circular', 'zeros'\), but got 'reflect'"):
        metrics.shift_consistency(model, torch.rand(2, 1, 8), max_shift=1, mode="reflect")
    with pytest.raises(ValueError, match=r"max_shift \(8\) must be smaller than every spatial size \(8,\)"):
        metrics.shift_consistency(model, torch.rand(2, 1, 8), max_shift=8)
    with pytest.raises(ValueError, match=r"needs a batch \(N, C, L\).*but got \(8,\)"):
        metrics.shift_consistency(model, torch.rand(8), max_shift=1)
    with pytest.raises(ValueError, match="at least one example"):
        metrics.shift_consistency(model, [], max_shift=1)
    with pytest.raises(ValueError, match=r"shifts must have shape \(N, 2\) = \(3, 2\), but got \(3, 1\)"):
        metrics.shift(torch.rand(3, 1, 5, 5), torch.zeros(3, 1, dtype=torch.long))
