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
