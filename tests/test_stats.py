"""gapeval.stats: paired tests, multiple-comparison correction, effect sizes, Fréchet distance and KID,
checked against scipy, closed forms and independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from gapeval.stats import (
    bootstrap_ci,
    cohens_dz,
    frechet_distance,
    frechet_distance_features,
    holm,
    kernel_distance,
    mmd2_unbiased,
    paired_bootstrap_ci,
    paired_comparison,
    rank_biserial,
    wilcoxon_signed_rank,
)
from lpips_sat.errors import InputError


# ---------------------------------------------------------------------------------------------- Wilcoxon, Holm, effect sizes
def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1, 40), rng.normal(0.0, 1, 40)
    got = wilcoxon_signed_rank(a, b)
    ref = stats.wilcoxon(a - b)
    assert got["pvalue"] == pytest.approx(ref.pvalue)
    assert got["statistic"] == pytest.approx(ref.statistic)
    assert got["n_nonzero"] == 40


def test_wilcoxon_all_zero_differences_is_no_evidence():
    x = np.arange(10.0)
    assert wilcoxon_signed_rank(x, x) == {"statistic": 0.0, "pvalue": 1.0, "n_nonzero": 0}


def test_holm_textbook_example():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])


def test_holm_against_brute_force_definition():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, 12)
    p[[2, 7]] = np.nan
    got = holm(p)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    srt = sorted(finite, key=lambda i: p[i])
    for rank, i in enumerate(srt):
        expect = min(1.0, max((m - j) * p[srt[j]] for j in range(rank + 1)))
        assert got[i] == pytest.approx(expect)
    assert np.isnan(got[[2, 7]]).all()
    with pytest.raises(InputError):
        holm([0.1, 1.5])


def test_cohens_dz_closed_form():
    d = np.array([1.0, 2.0, 3.0, 4.0])
    assert cohens_dz(d + 5, np.full(4, 5.0)) == pytest.approx(2.5 / np.std(d, ddof=1))
    assert cohens_dz(np.ones(5), np.ones(5)) == 0.0
    assert cohens_dz(np.ones(5) * 2, np.ones(5)) == np.inf


def test_rank_biserial_bounds_and_scipy_relation():
    assert rank_biserial(np.arange(1, 9.0), np.zeros(8)) == 1.0
    assert rank_biserial(np.zeros(8), np.arange(1, 9.0)) == -1.0
    rng = np.random.default_rng(5)
    d = rng.normal(0.2, 1, 30)
    total = 30 * 31 / 2
    w_min = stats.wilcoxon(d).statistic  # min(W+, W-) for the two-sided test
    r = rank_biserial(d)
    assert abs(r) == pytest.approx(1 - 2 * w_min / total)
    assert np.sign(r) == np.sign(np.median(d))


def test_paired_comparison_identical_conditions_covers_zero():
    rng = np.random.default_rng(7)
    a = rng.normal(0.3, 0.05, 30)
    res = paired_comparison(a, a.copy(), n_resamples=500)
    assert res["gap"] == 0 and res["ci_low"] <= 0 <= res["ci_high"] and res["p_value"] == 1.0


def test_paired_comparison_exchangeable_conditions_not_significant():
    rng = np.random.default_rng(11)
    scene = rng.normal(0.3, 0.05, 40)  # shared scene difficulty, independent noise: same distribution
    a, b = scene + rng.normal(0, 0.01, 40), scene + rng.normal(0, 0.01, 40)
    res = paired_comparison(a, b, n_resamples=1000)
    assert res["ci_low"] <= 0 <= res["ci_high"]
    assert res["p_value"] > 0.05


def test_paired_comparison_detects_known_shift():
    rng = np.random.default_rng(13)
    scene = rng.normal(0.3, 0.05, 40)
    a, b = scene + 0.01 + rng.normal(0, 0.005, 40), scene + rng.normal(0, 0.005, 40)
    res = paired_comparison(a, b, n_resamples=1000)
    assert res["ci_low"] > 0 and res["p_value"] < 1e-4
    assert res["gap"] == pytest.approx(np.mean(a - b))
    assert res["rank_biserial"] > 0.8 and res["cohens_dz"] > 1


def test_paired_bootstrap_ci_brackets_mean():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 50), rng.normal(0, 1, 50)
    lo, hi = paired_bootstrap_ci(a, b, n_resamples=500)
    assert lo < np.mean(a - b) < hi
    assert np.isnan(bootstrap_ci([1.0])).all()  # fewer than 2 values: no interval
    with pytest.raises(InputError):
        paired_bootstrap_ci(np.ones(3), np.ones(4))


# ---------------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_diagonal_gaussians_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expect)


def test_frechet_distance_full_covariances_against_scipy_sqrtm():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_features_identical_and_shifted():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 5))
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance_features(x, x + 2.0) == pytest.approx(5 * 4.0, rel=1e-6)  # pure mean shift: |dmu|^2
    with pytest.raises(InputError):
        frechet_distance_features(x, x[:, :3])
    with pytest.raises(InputError):
        frechet_distance_features(x[:1], x)


# ---------------------------------------------------------------------------------------------- KID
def test_mmd_unbiased_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(50, 8)), rng.normal(0.3, 1, size=(50, 8))
    ref = float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
    assert mmd2_unbiased(x, y) == pytest.approx(ref, rel=1e-9)


def test_kid_identical_sets_near_zero_and_shift_positive():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 6))
    same, same_std = kernel_distance(x, x, subset_size=100, n_subsets=50)
    other = rng.normal(size=(300, 6))
    fresh, _ = kernel_distance(x, other, subset_size=100, n_subsets=50)
    shifted, _ = kernel_distance(x, x + 1.0, subset_size=100, n_subsets=50)
    assert abs(same) < 3 * same_std + 1e-3
    assert abs(fresh) < 0.05 * shifted
    assert shifted > 10 * (abs(fresh) + same_std)


def test_kid_full_set_single_subset_equals_mmd():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    mean, std = kernel_distance(x, y, subset_size=20, n_subsets=1)
    assert mean == pytest.approx(mmd2_unbiased(x, y)) and std == 0.0
