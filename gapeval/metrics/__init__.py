"""Metrics of gapeval: classical full-reference metrics (:mod:`.classical`), LR-consistency and correctness
(:mod:`.consistency`), tiled LPIPS-Sat (:mod:`.perceptual`), and the opensr-test protocol (:mod:`.opensr`). Every
metric of gapeval's own protocol honours a validity mask.

This module also holds the one table of metric names, directions and descriptions used by the score
tables, summaries and reports, and gives ``compute(sr, hr, lr=None, ...)``: every ``pairs.csv`` column of arrays or
tensors in memory, through the code ``gapeval score`` runs per scene (:func:`gapeval.scoring.arrays.compute`; imported
on first use, as it needs the scoring pipeline that uses these metrics).
"""

from __future__ import annotations

from typing import Any

#: Headline metric -> (better direction, unit, one-line description). Per-band columns are ``<metric>_<band>``.
METRICS: dict[str, tuple[str, str, str]] = {
    "lpips_sat": ("lower", "", "LPIPS-Sat perceptual distance (learned, Sentinel-2 features)"),
    "psnr": ("higher", "dB", "peak signal-to-noise ratio at the declared data range"),
    "ssim": ("higher", "", "structural similarity, Gaussian window sigma 1.5, mean over bands"),
    "sam_deg": ("lower", "deg", "spectral angle mapper, mean angle between spectra"),
    "ergas": ("lower", "", "ERGAS (Wald 2000) with the resolution ratio h/l"),
    "rmse": ("lower", "refl.", "root mean squared error"),
    "mae": ("lower", "refl.", "mean absolute error"),
    "refl_l1": ("lower", "refl.", "reflectance consistency: |SR averaged to the LR grid - LR|"),
    "spectral_sam_deg": ("lower", "deg", "spectral consistency: SAM between SR on the LR grid and LR"),
    "shift_px": ("lower", "LR px", "spatial consistency: phase-correlation shift of SR on the LR grid vs LR"),
    "improvement": ("higher", "", "fraction of high-frequency patches closest to the improvement reference"),
    "omission": ("lower", "", "fraction of high-frequency patches closest to the omission reference (kept LR blur)"),
    "hallucination": ("lower", "", "fraction of high-frequency patches closest to the hallucination reference"),
    # --protocol opensr-test (opensr-test 1.3.3 Metrics().compute, gapeval/metrics/opensr.py)
    "opensr_reflectance": ("lower", "refl.", "opensr-test reflectance: |SR bilinearly on the LR grid - LR|, 16 px border masked"),
    "opensr_spectral": ("lower", "deg", "opensr-test spectral: spectral angle between SR on the LR grid and LR"),
    "opensr_spatial": ("lower", "LR px", "opensr-test spatial: phase-correlation shift length, SR on the LR grid vs LR"),
    "opensr_synthesis": ("higher", "refl.", "opensr-test synthesis: |LR upsampled - harmonised SR|, detail added (more, not necessarily right)"),
    "opensr_improvement": ("higher", "", "opensr-test im_metric: mean softmin weight of the improvement class"),
    "opensr_omission": ("lower", "", "opensr-test om_metric: mean softmin weight of the omission class"),
    "opensr_hallucination": ("lower", "", "opensr-test ha_metric: mean softmin weight of the hallucination class"),
}

#: Metrics that are computed per band too (columns ``<metric>_<band>``).
PER_BAND = ("psnr", "ssim", "rmse", "mae", "refl_l1")


def direction(column: str) -> str | None:
    """``"higher"``/``"lower"`` (which is better) for a metric column, per-band columns included; else ``None``."""
    if column.startswith("raw_"):  # --report-raw: the same metric on the unaligned target
        column = column[4:]
    if column in METRICS:
        return METRICS[column][0]
    base = column.rsplit("_", 1)[0]
    return METRICS[base][0] if base in PER_BAND else None


def __getattr__(name: str) -> Any:
    if name == "compute":
        from gapeval.scoring.arrays import compute

        return compute
    raise AttributeError(f"module 'gapeval.metrics' has no attribute {name!r}")
