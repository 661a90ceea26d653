"""The one home of resampling statistics: bootstrap confidence intervals (scipy.stats.bootstrap)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from lpips_sat.errors import InputError


def bootstrap_ci(values: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float]:
    """Percentile-BCa bootstrap CI of ``statistic`` over finite ``values`` (NaNs dropped).

    Returns ``(nan, nan)`` for fewer than 2 finite values or a constant sample (where the CI is the point).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (float("nan"), float("nan"))
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = stats.bootstrap((x,), statistic, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                          random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
    lo, hi = res.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa can fail on tiny/degenerate samples: fall back to percentile
        res = stats.bootstrap((x,), statistic, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                              random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
        lo, hi = res.confidence_interval
    return (float(lo), float(hi))


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, **kwargs) -> tuple[float, float]:
    """Bootstrap CI of ``mean(a - b)`` over matched pairs (rows of ``a`` and ``b`` are the same scenes)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise InputError(f"Paired samples must have the same length, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, **kwargs)


def summarize(values: np.ndarray, **kwargs) -> dict[str, float]:
    """Mean, median, std, count and bootstrap 95 % CI of the finite ``values``."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    lo, hi = bootstrap_ci(x, **kwargs)
    return {"n": int(x.size), "mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0, "ci_low": lo, "ci_high": hi}


# ---------------------------------------------------------------------------------------------- paired tests
def _paired(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Finite differences ``a - b`` of matched pairs (pairs with a NaN/inf on either side are dropped)."""
    a = np.asarray(a, dtype=float)
    if b is None:
        d = a
    else:
        b = np.asarray(b, dtype=float)
        if a.shape != b.shape:
            raise InputError(f"Paired samples must have the same length, got {a.shape} and {b.shape}")
        d = a - b
    return d[np.isfinite(d)]


def wilcoxon_signed_rank(a: np.ndarray, b: np.ndarray | None = None, *, alternative: str = "two-sided") -> dict[str, float]:
    """Wilcoxon signed-rank test of ``a - b`` (or of ``a`` alone) against a zero median (scipy.stats.wilcoxon).

    Zero differences are dropped (Wilcoxon's original treatment); scipy picks the exact null distribution for small
    samples without ties and the normal approximation otherwise. All-zero differences give ``p = 1`` (no evidence of a
    shift); fewer than one non-zero difference cannot be tested.

    Returns:
        ``{"statistic", "pvalue", "n_nonzero"}``; ``statistic`` is scipy's (min(W+, W-) for two-sided).
    """
    d = _paired(a, b)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return {"statistic": 0.0, "pvalue": 1.0 if d.size else float("nan"), "n_nonzero": 0}
    res = stats.wilcoxon(d, zero_method="wilcox", alternative=alternative)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n_nonzero": nonzero}


def smallest_wilcoxon_p(n_nonzero: int) -> float:
    """The smallest two-sided p-value :func:`wilcoxon_signed_rank` can return for ``n_nonzero`` non-zero differences:
    its p for ``n`` distinct differences of one sign. With the exact null distribution (small samples without ties)
    this is ``2 / 2**n`` (all ``2**n`` sign patterns equally likely, two tails); 1 for ``n = 0``."""
    if n_nonzero < 1:
        return 1.0
    return wilcoxon_signed_rank(np.arange(1.0, n_nonzero + 1.0))["pvalue"]


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values controlling the family-wise error rate.

    ``p_(i)`` sorted ascending is adjusted to ``max_{j <= i} min(1, (m - j + 1) p_(j))``; NaNs are kept as NaN and do
    not count towards ``m``.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
        [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise InputError(f"p-values must lie in [0, 1], got {p[idx].min():g}..{p[idx].max():g}")
    m = idx.size
    order = idx[np.argsort(p[idx], kind="mergesort")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def cohens_dz(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """Cohen's d_z for paired samples: ``mean(d) / sd(d)`` with ``d = a - b`` (sd with ddof=1).

    NaN for fewer than 2 pairs; ``0`` when every difference is 0; ``±inf`` for a constant non-zero difference.
    """
    d = _paired(a, b)
    if d.size < 2:
        return float("nan")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if mean == 0 else float(np.copysign(np.inf, mean))
    return mean / sd


def rank_biserial(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """Matched-pairs rank-biserial correlation ``(W+ - W-) / (W+ + W-)`` in [-1, 1] (Kerby 2014, simple difference formula).

    ``W±`` are the sums of the ranks of ``|d|`` (average ranks for ties, zeros dropped) over positive / negative
    differences ``d = a - b``. +1: every pair has ``a > b``; 0 when all differences are zero.
    """
    d = _paired(a, b)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    w_plus, w_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((w_plus - w_minus) / (w_plus + w_minus))


def paired_comparison(a: np.ndarray, b: np.ndarray, **bootstrap_kwargs) -> dict[str, float]:
    """Everything reported for one gap ``a - b`` over matched pairs: means, mean gap with paired bootstrap CI,
    median gap, Wilcoxon signed-rank p-value (unadjusted), Cohen's d_z and the rank-biserial correlation."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise InputError(f"Paired samples must have the same length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    lo, hi = paired_bootstrap_ci(a, b, **bootstrap_kwargs)
    w = wilcoxon_signed_rank(d)
    return {
        "n": int(d.size),
        "mean_a": float(a.mean()) if d.size else float("nan"),
        "mean_b": float(b.mean()) if d.size else float("nan"),
        "gap": float(d.mean()) if d.size else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "median_gap": float(np.median(d)) if d.size else float("nan"),
        "wilcoxon_statistic": w["statistic"],
        "p_value": w["pvalue"],
        "n_nonzero": w["n_nonzero"],
        "cohens_dz": cohens_dz(d),
        "rank_biserial": rank_biserial(d),
    }


# ---------------------------------------------------------------------------------------------- distribution distances
def _features_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"`{name}` must be an (n_samples, n_features) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"`{name}` contains NaN/inf feature values")
    return x


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between Gaussians N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    ``d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``; returned as ``d^2`` (the FID convention).
    The trace term is computed from the eigenvalues of the symmetric matrix ``S1^{1/2} S2 S1^{1/2}``, which is stable
    for the singular covariances of small feature sets.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, float)), np.atleast_2d(np.asarray(sigma2, float))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"Fréchet distance needs matching means (d,) and covariances (d, d); got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    r1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_cov = float(np.sqrt(np.clip(eig, 0, None)).sum())
    d2 = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_cov)
    return max(d2, 0.0)


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (mean, covariance with ddof=1) to feature sets ``x`` and ``y``."""
    x, y = _features_2d(x, "x"), _features_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"Feature sets have different dimensions: {x.shape[1]} and {y.shape[1]}")
    if min(len(x), len(y)) < 2:
        raise InputError(f"Fréchet distance needs at least 2 samples per set, got {len(x)} and {len(y)}")
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """``k(x, y) = (gamma <x, y> + coef0)^degree`` with ``gamma = 1 / n_features`` by default (the KID kernel)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, **kernel_kwargs) -> float:
    """Unbiased estimate of the squared MMD with the polynomial kernel (Gretton et al. 2012, eq. 3).

    ``sum_{i!=j} k(x_i,x_j) / (m(m-1)) + sum_{i!=j} k(y_i,y_j) / (n(n-1)) - 2 sum_ij k(x_i,y_j) / (mn)``; can be negative.
    """
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise InputError(f"MMD needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x, **kernel_kwargs), polynomial_kernel(y, y, **kernel_kwargs), polynomial_kernel(x, y, **kernel_kwargs)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def kernel_distance(x: np.ndarray, y: np.ndarray, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0,
                    **kernel_kwargs) -> tuple[float, float]:
    """Kernel Inception Distance in any feature space (Bińkowski et al. 2018): mean and std of the unbiased MMD^2
    over ``n_subsets`` random subsets of ``min(subset_size, len(x), len(y))`` samples drawn without replacement."""
    x, y = _features_2d(x, "x"), _features_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"Feature sets have different dimensions: {x.shape[1]} and {y.shape[1]}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise InputError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    vals = np.array([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)], **kernel_kwargs)
                     for _ in range(n_subsets)])
    return float(vals.mean()), float(vals.std(ddof=1)) if n_subsets > 1 else 0.0
