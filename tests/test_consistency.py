"""LR-consistency: phase correlation against known shifts and scikit-image, correctness classes, accumulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import fourier_shift, gaussian_filter
from skimage.registration import phase_cross_correlation

from gapeval.metrics.classical import mae, sam
from gapeval.metrics.consistency import (
    CORRECTNESS_LAMBDAS,
    ConsistencyAccumulator,
    correctness_counts,
    correctness_scores,
    phase_correlation,
)

BANDS = ("B04", "B03", "B02", "B08")


def smooth_field(shape, seed, sigma=1.5):
    return gaussian_filter(np.random.default_rng(seed).random(shape), sigma)


def subpixel_shift(img, shift):
    return np.fft.ifft2(fourier_shift(np.fft.fft2(img), shift)).real


@pytest.mark.parametrize("shift", [(3.0, -5.0), (0.35, -1.7), (-2.45, 0.6)])
def test_phase_correlation_recovers_known_circular_shifts(shift):
    a = smooth_field((48, 48), 0)
    b = subpixel_shift(a, shift)  # content moves by +shift
    assert phase_correlation(a, b) == pytest.approx(shift, abs=0.2)  # the Hann window breaks the periodicity a little
    dy, dx = phase_correlation(a, b, window=False, normalization=1.0)  # classic phase correlation
    assert (dy, dx) == pytest.approx(shift, abs=0.051)
    ref = phase_cross_correlation(a, b, upsample_factor=20)[0]  # scikit-image reports the registering (opposite) shift
    assert (dy, dx) == pytest.approx((-ref[0], -ref[1]), abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_phase_correlation_on_non_periodic_crops(seed):
    big = smooth_field((160, 160), seed, sigma=2.0)
    a = big[40:104, 40:104]
    b = big[38:102, 41:105]  # content moves by (+2, -1)
    assert phase_correlation(a, b) == pytest.approx((2.0, -1.0), abs=0.15)
    assert phase_correlation(a, a) == (0.0, 0.0)


def test_correctness_scores_formula():
    d_im, d_om = np.array([0.3, 1.2]), np.array([0.8, 0.1])
    lim, lom, lha = CORRECTNESS_LAMBDAS
    h = d_im + d_om - 1
    expected = np.stack([d_im + d_om * (1 - np.exp(-lim * h)), d_om + d_im * (1 - np.exp(-lom * h)), np.exp(-lha * d_im * d_om)])
    assert np.allclose(correctness_scores(d_im, d_om), expected)


def test_correctness_classes_of_known_cases():
    rng = np.random.default_rng(3)
    hr = np.stack([gaussian_filter(rng.random((64, 64)), 0.7) * 0.4 for _ in range(4)])
    lr_up = np.stack([gaussian_filter(b, 3) for b in hr])  # the detail the LR lacks
    counts = correctness_counts(hr, hr, lr_up, patch=8, threshold=0.001)
    assert counts[0] == counts.sum() > 0  # SR = HR: every patch an improvement
    counts = correctness_counts(lr_up, hr, lr_up, patch=8, threshold=0.001)
    assert counts[1] == counts.sum() > 0  # SR = LR upsampled: omission
    fake = lr_up + 3 * (np.roll(hr, 17, axis=2) - lr_up)  # strong detail that is not the target's
    counts = correctness_counts(fake, hr, lr_up, patch=8, threshold=0.001)
    assert counts[2] > 0.8 * counts.sum()  # hallucination dominates
    assert correctness_counts(hr, hr, hr, patch=8).sum() == 0  # no detail to recover: no patch counts


def test_accumulator_consistency_values():
    rng = np.random.default_rng(4)
    lr = np.stack([gaussian_filter(rng.random((32, 32)), 1.2) * 0.3 + 0.05 for _ in range(4)])
    sr_on_lr = np.stack([subpixel_shift(b, (0.5, -0.25)) for b in lr]) * 1.02
    valid = np.ones((32, 32), bool)
    valid[:3] = False
    acc = ConsistencyAccumulator(BANDS)
    acc.update_lr(sr_on_lr, lr, valid)
    res = acc.result()
    assert res["refl_l1"] == pytest.approx(mae(sr_on_lr, lr, valid), rel=1e-12)
    assert res["refl_l1_B03"] == pytest.approx(mae(sr_on_lr[1:2], lr[1:2], valid), rel=1e-12)
    assert res["spectral_sam_deg"] == pytest.approx(sam(sr_on_lr, lr, valid), rel=1e-12)
    assert (res["shift_dy"], res["shift_dx"]) == pytest.approx((0.5, -0.25), abs=0.2)
    assert res["shift_px"] == pytest.approx(np.hypot(res["shift_dy"], res["shift_dx"]))
    assert np.isnan(res["improvement"]) and res["tc_patches"] == 0  # no HR block given


def test_nothing_valid_gives_nan_not_zero():
    acc = ConsistencyAccumulator(BANDS)
    x = np.ones((4, 20, 20))
    acc.update_lr(x, x, np.zeros((20, 20), bool))
    res = acc.result()
    assert np.isnan(res["refl_l1"]) and np.isnan(res["spectral_sam_deg"]) and np.isnan(res["shift_px"])
