"""Plausibility checks that scaled pixel values are reflectance (not digital numbers, not divided twice)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lpips_sat.errors import InputError
from lpips_sat.raster import RasterInfo


def declared_scale(info: RasterInfo, bands: Sequence[int], gain: np.ndarray, offset: np.ndarray) -> str | None:
    """The file's own band scale/offset metadata as text (``"scale 0.0001, offset 0"``) when it is what turned the raw
    values into ``raw * gain + offset``; ``None`` when the file declares none or an explicit scale replaced it."""
    scales = np.array([info.scales[i] if info.scales else 1.0 for i in bands], np.float64)
    offsets = np.array([info.offsets[i] if info.offsets else 0.0 for i in bands], np.float64)
    if np.all(scales == 1.0) and np.all(offsets == 0.0):
        return None
    if not (np.allclose(np.ravel(gain), scales, rtol=1e-6) and np.allclose(np.ravel(offset), offsets, atol=1e-9)):
        return None

    def text(values: np.ndarray) -> str:
        return f"{values[0]:g}" if np.all(values == values[0]) else ",".join(f"{v:g}" for v in values)

    return f"scale {text(scales)}, offset {text(offsets)}"


def _corrupt(path: Path, what: str, declared: str) -> InputError:
    return InputError(
        f"{path}: {what} are implausible for reflectance under the scale the file declares ({declared}); the file may be "
        "corrupt (e.g. a damaged tile that decodes to garbage) or its scale metadata wrong; check it (gdalinfo -checksum) or re-export it"
    )


def check_reflectance(data: np.ndarray, valid: np.ndarray, path: Path, flag: str, declared: str | None = None) -> float:
    """Fail on values no reflectance image has; return the largest valid value (for :func:`check_not_tiny`).

    ``declared`` (from :func:`declared_scale`): the file's own scale metadata produced the values, so the advice is
    that the file may be corrupt, not to pass ``flag``.

    Raises:
        InputError: valid values above ``MAX_REFLECTANCE`` (digital numbers not divided) or below -0.5.
    """
    from lpips_sat.metric import MAX_REFLECTANCE

    if not valid.any():
        return float("-inf")
    vals = data[:, valid]
    hi, lo = float(vals.max()), float(vals.min())
    if hi > MAX_REFLECTANCE:
        if declared:
            raise _corrupt(path, f"values up to {hi:g}", declared)
        raise InputError(
            f"{path}: values up to {hi:g} are not reflectance (expected about 0..1.5); these look like digital numbers: "
            f"pass {flag} 10000 for Sentinel-2 / PlanetScope DN (or 255 for 8-bit images)"
        )
    if lo < -0.5:
        if declared:
            raise _corrupt(path, f"values down to {lo:g}", declared)
        raise InputError(f"{path}: values down to {lo:g} are not reflectance; check {flag} and any offset (e.g. -1000 DN applied twice)")
    return hi


def check_not_tiny(max_value: float, path: Path, flag: str, declared: str | None = None) -> None:
    """Fail when a whole image's largest valid value is below ``MIN_DN_MAX / 10000``: reflectance divided again
    (or, with ``declared``, a file whose scale metadata does not fit its values)."""
    from lpips_sat.metric import MIN_DN_MAX

    if np.isfinite(max_value) and max_value < MIN_DN_MAX / 10000.0:
        if declared:
            raise _corrupt(path, f"values up to {max_value:g}", declared)
        raise InputError(
            f"{path}: largest value is {max_value:g}, implausibly small for reflectance; the file probably holds "
            f"reflectance already and was divided by a DN scale (drop {flag}), or its nodata value is not declared"
        )
