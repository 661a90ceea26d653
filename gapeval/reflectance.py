"""Plausibility checks that scaled pixel values are reflectance (not digital numbers, not divided twice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpips_sat.errors import InputError


def was_scaled(scale: float | None, gain: np.ndarray, offset: np.ndarray) -> bool:
    """Whether values were converted by a scale: an explicit one, or the file's own scale/offset metadata
    (``gain``/``offset`` of :func:`lpips_sat.raster.band_gain_offset`); the ``scaled`` of :func:`check_reflectance`."""
    return scale is not None or bool(np.any(np.asarray(gain) != 1) or np.any(np.asarray(offset) != 0))


def check_reflectance(data: np.ndarray, valid: np.ndarray, path: Path, flag: str, *, scaled: bool = False) -> float:
    """Fail on values no reflectance image has; return the largest valid value (for :func:`check_not_tiny`).

    ``scaled``: the values were already converted by a scale (the file's own metadata or ``flag``), so implausible
    values point at a corrupt file rather than at a missing scale.
    Raises:
        InputError: valid values above ``MAX_REFLECTANCE`` (digital numbers not divided) or below -0.5.
    """
    from lpips_sat.metric import MAX_REFLECTANCE

    if not valid.any():
        return float("-inf")
    vals = data[:, valid]
    hi, lo = float(vals.max()), float(vals.min())
    if scaled and (hi > MAX_REFLECTANCE or lo < -0.5):
        raise InputError(
            f"{path}: values {lo:g}..{hi:g} are implausible for reflectance even after the scale applied to this file "
            f"(its own scale metadata or {flag}); the file may be corrupt (e.g. a damaged tile), or the scale is wrong"
        )
    if hi > MAX_REFLECTANCE:
        raise InputError(
            f"{path}: values up to {hi:g} are not reflectance (expected about 0..1.5); these look like digital numbers: "
            f"pass {flag} 10000 for Sentinel-2 / PlanetScope DN (or 255 for 8-bit images)"
        )
    if lo < -0.5:
        raise InputError(f"{path}: values down to {lo:g} are not reflectance; check {flag} and any offset (e.g. -1000 DN applied twice)")
    return hi


def check_not_tiny(max_value: float, path: Path, flag: str, *, scaled: bool = True) -> None:
    """Fail when a whole image's largest valid value is below ``MIN_DN_MAX / 10000``: reflectance divided again
    (``scaled``: a scale was applied), else an empty (black) image or an undeclared nodata value."""
    from lpips_sat.metric import MIN_DN_MAX

    if np.isfinite(max_value) and max_value < MIN_DN_MAX / 10000.0 and not scaled:
        raise InputError(
            f"{path}: largest value is {max_value:g}, implausibly small for reflectance (no scale was applied): the image "
            "is empty (black), or its nodata value is not declared"
        )
    if np.isfinite(max_value) and max_value < MIN_DN_MAX / 10000.0:
        raise InputError(
            f"{path}: largest value is {max_value:g}, implausibly small for reflectance; the file probably holds "
            f"reflectance already and was divided by a DN scale (drop {flag}), or its nodata value is not declared"
        )
