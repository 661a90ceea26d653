"""The opensr-test protocol: ``opensr_test.Metrics().compute(lr, sr, hr)`` of opensr-test 1.3.3, default settings.

Re-implemented here from a reading of the opensr-test 1.3.3 package (Aybar et al. 2024, "A Comprehensive
Benchmark for Optical Remote Sensing Image Super-Resolution"; MIT) so that gapeval numbers can be put next to
published opensr-test tables; ``tests/test_opensr_protocol.py`` checks it against the package itself. What it
computes, for one triplet LR (C, h, w), SR and HR (C, H, W) with ``H = s h``:

1. Border mask: 16 px cut from every side of SR and HR, ``16 // s`` LR px from LR.
2. Grid changes by bilinear interpolation with antialiasing (``torch.nn.functional.interpolate``): SR onto the
   LR grid (``sr_to_lr``) and LR onto the HR grid (``lr_to_hr``).
3. Consistency with the LR input: ``reflectance`` = mean over pixels of the band-mean ``|LR - sr_to_lr|``;
   ``spectral`` = mean spectral angle (degrees) between ``LR`` and ``sr_to_lr``; ``spatial`` = length (LR px) of
   the phase-correlation translation between the band means of bands 0-2 of both (NaN when the estimate
   fails or exceeds 5 px).
4. Harmonisation of SR to HR (``sr_harm``): per-band histogram matching of SR to HR, then the translation of
   the band-mean image found by phase correlation against HR's band mean (1/50 px), undone by bilinear
   resampling with edge replication (identity when above 5 px). The prediction is changed, the target not.
5. ``synthesis`` = mean band-mean ``|lr_to_hr - sr_harm|``.
6. Correctness with the "normalised difference" ``nd(x, y)`` = band mean of ``|x - y| / |x + y + 1e-8|`` per
   pixel: ``d_ref = nd(lr_to_hr, HR)``, ``d_im = nd(sr_harm, HR)``, ``d_om = nd(sr_harm, lr_to_hr)``. Pixels
   where none of the three exceeds the k-th smallest ``d_ref`` (k = int(0.75 n)) are dropped. With
   ``a = d_im / d_ref``, ``b = d_om / d_ref`` the opensr-test scores (λ = 0.05 each) are turned into class
   weights by a softmin of temperature 0.25; ``im_metric``, ``om_metric``, ``ha_metric`` are their means.

Pixel values are reflectance; arrays keep their float precision (float32 stays float32, as in the package),
except that histogram matching (:func:`gapeval.align.histogram_match`) and the translation run in float32 (the
package's OpenCV warp does too): float64 inputs then differ from the package by about 1e-7 (relative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gapeval.align import histogram_match
from gapeval.metrics.consistency import correctness_scores
from lpips_sat.errors import InputError


@dataclass(frozen=True)
class OpenSRSettings:
    """The defaults of ``opensr_test.Config`` (1.3.3) that :func:`opensr_test_metrics` reproduces."""

    border: int = 16  # border_mask (HR px)
    rgb_bands: tuple[int, int, int] = (0, 1, 2)  # bands of the spatial-consistency estimate
    max_translation: float = 5.0  # spatial_threshold_distance (px)
    upsample: int = 50  # phase-correlation refinement: 1/50 px (satalign's PCC default)
    quantile: float = 0.75  # gradient_threshold="auto" = "auto75"
    lambdas: tuple[float, float, float] = (0.05, 0.05, 0.05)  # im_score, om_score, ha_score
    temperature: float = 0.25  # correctness_temperature of the softmin
    nd_eps: float = 1e-8  # denominator guard of the normalised difference


DEFAULT = OpenSRSettings()
#: Keys of :func:`opensr_test_metrics`, as opensr-test names them.
KEYS = ("reflectance", "spectral", "spatial", "synthesis", "ha_metric", "om_metric", "im_metric")


# ---------------------------------------------------------------------------------------------------- pieces


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
    if t.ndim != 3:
        raise InputError(f"opensr-test protocol: {name} must be (bands, rows, cols), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    return t


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[:, border:-border, border:-border] if border else x


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize with antialiasing by ``factor`` (< 1 shrinks), as opensr-test changes grids."""
    return F.interpolate(x[None], scale_factor=factor, mode="bilinear", antialias=True)[0]


def _nanmean_bands(x: torch.Tensor) -> torch.Tensor:
    return torch.nanmean(x, dim=0)


def phase_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 50) -> tuple[float, float] | None:
    """Translation ``(dy, dx)`` that moves ``moving`` onto ``reference`` (2-D, same shape), to ``1/upsample`` px,
    or ``None`` when the correlation is not finite.

    Guizar-Sicairos et al. (2008) as opensr-test runs it: no window, no mean removal, the cross-power spectrum
    divided by its magnitude (floored at 100 machine epsilons), integer peak, then an upsampled DFT over a
    ``ceil(1.5 upsample)``-point grid centred on it. Computed in the input's precision (float32 -> complex64).
    gapeval's own estimator (:mod:`gapeval.metrics.consistency`) windows and half-normalises instead; this one
    exists only to reproduce opensr-test's ``spatial`` value and harmonisation.
    """
    import scipy.fft

    a = scipy.fft.fftn(reference)
    b = scipy.fft.fftn(moving)
    cross = a * b.conj()
    real = cross.real.dtype
    cross /= np.maximum(np.abs(cross), 100 * np.finfo(real).eps)
    corr = np.abs(scipy.fft.ifftn(cross))
    shape = np.array(cross.shape)
    peak = np.array(np.unravel_index(np.argmax(corr), corr.shape), dtype=real)
    peak[peak > np.trunc(shape / 2)] -= shape[peak > np.trunc(shape / 2)]
    factor = real.type(upsample)
    peak = np.round(peak * factor) / factor
    size = int(np.ceil(upsample * 1.5))
    centre = np.trunc(real.type(size) / 2)
    start = peak * factor - centre  # grid position (in 1/upsample px) of the first fine sample
    # fine[i, j] = sum_kl cross[k, l] exp(2 pi i ((start_r + i) f_k + (start_c + j) f_l)), f = fftfreq / upsample
    kr = np.exp(2j * np.pi * np.outer(np.arange(size) + start[0], np.fft.fftfreq(cross.shape[0], upsample))).astype(cross.dtype)
    kc = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(cross.shape[1], upsample), np.arange(size) + start[1])).astype(cross.dtype)
    fine = np.abs(kr @ cross @ kc)
    best = np.array(np.unravel_index(np.argmax(fine), fine.shape), dtype=real)
    shift = peak + (best - centre) / factor
    shift[shape == 1] = 0
    if not (np.isfinite(fine).all() and np.isfinite(corr).all()):
        return None
    return float(shift[0]), float(shift[1])


def _translation(reference: torch.Tensor, moving: torch.Tensor, settings: OpenSRSettings) -> tuple[float, float] | None:
    """opensr-test's translation ``(tx, ty)`` (float32, px) from band means, or ``None`` (failed or too large)."""
    ref = reference.numpy().mean(axis=0)
    mov = moving.numpy().mean(axis=0)
    shift = phase_shift(ref, mov, settings.upsample)
    if shift is None:
        return None
    tx, ty = np.float32(shift[1]), np.float32(shift[0])
    if np.hypot(tx, ty, dtype=np.float32) > settings.max_translation:
        return None
    return float(tx), float(ty)


def translate(image: np.ndarray, tx: float, ty: float) -> np.ndarray:
    """``out(y, x) = image(y - ty, x - tx)`` per band, bilinear, edges replicated, computed in float32 (as the
    OpenCV ``warpAffine`` that opensr-test uses) and returned in ``image``'s dtype."""
    src = image.astype(np.float32)
    _, h, w = src.shape

    def axis(n: int, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(n, dtype=np.float64) - np.float64(np.float32(t))
        lo = np.floor(pos)
        frac = (pos - lo).astype(np.float32)
        lo = lo.astype(np.int64)
        return np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1), frac

    x0, x1, fx = axis(w, tx)
    y0, y1, fy = axis(h, ty)
    rows = src[:, :, x0] * (1 - fx) + src[:, :, x1] * fx
    out = rows[:, y0, :] * (1 - fy)[:, None] + rows[:, y1, :] * fy[:, None]
    return out.astype(image.dtype)


def normalised_difference(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT.nd_eps) -> torch.Tensor:
    """opensr-test's ``nd`` distance per pixel: band mean of ``|x - y| / |x + y + eps|``."""
    return _nanmean_bands(torch.abs(x - y) / torch.abs(x + y + eps))


def spectral_angle_deg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) between the spectra of ``x`` and ``y`` per pixel (NaN where either is all zero)."""
    cos = (x * y).sum(dim=0) / (x.norm(dim=0) * y.norm(dim=0))
    return torch.rad2deg(torch.clamp(cos, -1, 1).acos())


def _harmonise(sr: torch.Tensor, hr: torch.Tensor, settings: OpenSRSettings) -> torch.Tensor:
    """SR with HR's per-band histograms, then translated onto HR (step 4 of the module docstring)."""
    matched = histogram_match(sr.numpy(), hr.numpy()).astype(sr.numpy().dtype)
    move = _translation(hr, torch.from_numpy(matched), settings)
    if move is not None:
        matched = translate(matched, *move)
    return torch.from_numpy(matched)


def _rgb(x: torch.Tensor, settings: OpenSRSettings) -> torch.Tensor:
    return x[list(settings.rgb_bands)] if x.shape[0] >= 3 else x[:1]


# --------------------------------------------------------------------------------------------------- protocol


def opensr_test_metrics(lr: Any, sr: Any, hr: Any, settings: OpenSRSettings = DEFAULT) -> dict[str, float]:
    """``opensr_test.Metrics().compute(lr, sr, hr)`` (opensr-test 1.3.3, default configuration) for one triplet.

    Args:
        lr: (C, h, w) low-resolution input; sr, hr: (C, s h, s w) prediction and target; reflectance, numpy or
            torch, no NaN (opensr-test has no nodata mask).
    Returns:
        ``reflectance``, ``spectral`` (deg), ``spatial`` (LR px), ``synthesis``, ``ha_metric``, ``om_metric``,
        ``im_metric`` (see the module docstring).
    Raises:
        InputError: shapes that are not (C, H, W), band counts that differ, a non-integer scale, a scale that does
            not divide the 16 px border (opensr-test then fails too), images not larger than the border, NaN.
    """
    lr_t, sr_t, hr_t = _as_tensor(lr, "lr"), _as_tensor(sr, "sr"), _as_tensor(hr, "hr")
    if sr_t.shape != hr_t.shape or lr_t.shape[0] != sr_t.shape[0]:
        raise InputError(f"opensr-test protocol: sr {tuple(sr_t.shape)}, hr {tuple(hr_t.shape)} and lr {tuple(lr_t.shape)} must share bands, sr and hr their size")
    ratio = hr_t.shape[-1] / lr_t.shape[-1]
    if not float(ratio).is_integer():
        raise InputError(f"opensr-test protocol: HR width {hr_t.shape[-1]} is not an integer multiple of LR width {lr_t.shape[-1]}")
    scale = int(ratio)
    b = settings.border
    if scale * (b // scale) != b or hr_t.shape[-2] != scale * lr_t.shape[-2]:
        raise InputError(
            f"opensr-test protocol: scale x{scale} with LR {tuple(lr_t.shape[1:])} and HR {tuple(hr_t.shape[1:])}: the scale must divide "
            f"the {b} px border mask and the HR height be scale x LR height (opensr-test 1.3.3 fails otherwise)"
        )
    if min(hr_t.shape[1:]) < min_size(scale, settings):
        raise InputError(f"opensr-test protocol: HR {tuple(hr_t.shape[1:])} px leaves less than 2 LR px inside the {b} px border mask")
    for name, t in (("lr", lr_t), ("sr", sr_t), ("hr", hr_t)):
        if not torch.isfinite(t).all():
            raise InputError(f"opensr-test protocol: {name} has NaN/inf pixels (the protocol has no nodata mask)")
    lr_c, sr_c, hr_c = _crop(lr_t, b // scale), _crop(sr_t, b), _crop(hr_t, b)
    lr_to_hr = _resize(lr_c, scale) if scale > 1 else lr_c
    sr_to_lr = _resize(sr_c, 1 / scale)

    out: dict[str, float] = {}
    out["reflectance"] = _nanmean_bands(torch.abs(lr_c - sr_to_lr)).nanmean().item()
    out["spectral"] = spectral_angle_deg(lr_c, sr_to_lr).nanmean().item()
    move = _translation(_rgb(sr_to_lr, settings), _rgb(lr_c, settings), settings)
    out["spatial"] = float(np.hypot(np.float32(move[0]), np.float32(move[1]), dtype=np.float32)) if move else float("nan")

    sr_harm = _harmonise(sr_c, hr_c, settings)
    out["synthesis"] = _nanmean_bands(torch.abs(lr_to_hr - sr_harm)).nanmean().item()

    d_ref = normalised_difference(lr_to_hr, hr_c, settings.nd_eps)
    d_im = normalised_difference(sr_harm, hr_c, settings.nd_eps)
    d_om = normalised_difference(sr_harm, lr_to_hr, settings.nd_eps)
    flat = d_ref.flatten()
    k = int(settings.quantile * flat.numel())
    if k < 1:
        raise InputError("opensr-test protocol: too few pixels inside the border mask for the automatic threshold")
    threshold = torch.kthvalue(flat, k).values
    keep = (d_ref > threshold) | (d_im > threshold) | (d_om > threshold)
    a = (d_im[keep] / d_ref[keep]).numpy()
    c = (d_om[keep] / d_ref[keep]).numpy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scores = correctness_scores(a, c, settings.lambdas)  # (3, n): improvement, omission, hallucination
        weights = np.exp(-scores / scores.dtype.type(settings.temperature))
        weights = weights / weights.sum(axis=0)
        im, om, ha = (float(np.nanmean(w)) if w.size else float("nan") for w in weights)
    out["ha_metric"], out["om_metric"], out["im_metric"] = ha, om, im
    return {k: out[k] for k in KEYS}


# ------------------------------------------------------------------------------------------ over windows

#: ``pairs.csv`` column of each opensr-test value, and the column counting the windows computed.
COLUMNS = {
    "reflectance": "opensr_reflectance",
    "spectral": "opensr_spectral",
    "spatial": "opensr_spatial",
    "synthesis": "opensr_synthesis",
    "im_metric": "opensr_improvement",
    "om_metric": "opensr_omission",
    "ha_metric": "opensr_hallucination",
}
TILES_COLUMN = "opensr_tiles"


def min_size(scale: int, settings: OpenSRSettings = DEFAULT) -> int:
    """Smallest HR side (px) the protocol takes at ``scale``: the border on both sides plus 2 LR pixels."""
    return 2 * settings.border + 2 * scale


def check_scale(ratio: float, where: str, settings: OpenSRSettings = DEFAULT) -> int:
    """The integer scale of an LR/HR pixel-size ``ratio`` usable by the protocol (it must divide the border mask).

    Raises:
        InputError: a non-integer ratio or one that does not divide the border (naming ``where``).
    """
    scale = round(ratio)
    if abs(ratio - scale) > 1e-6 or scale < 1 or settings.border % scale:
        raise InputError(
            f"{where}: --protocol opensr-test needs an integer LR/HR pixel-size ratio that divides its {settings.border} px border "
            f"(2, 4, 8 or 16), got {ratio:g}"
        )
    return scale


@dataclass
class OpenSRAccumulator:
    """The opensr-test protocol over the windows of one scene: each window is one opensr-test triplet; the scene
    value is the mean of the window values weighted by the pixels inside their border masks (per value, over the
    windows where it is finite). Windows with an invalid pixel or too small for the border mask are left out."""

    settings: OpenSRSettings = DEFAULT
    _sum: dict[str, float] | None = None
    _weight: dict[str, float] | None = None
    tiles: int = 0

    def update(self, lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, complete: bool) -> None:
        """Add one window (``complete``: every pixel of the three is valid)."""
        b = self.settings.border
        if not complete or min(hr.shape[1:]) < min_size(round(hr.shape[-1] / lr.shape[-1]), self.settings):
            return
        values = opensr_test_metrics(lr, sr, hr, self.settings)
        weight = float((hr.shape[1] - 2 * b) * (hr.shape[2] - 2 * b))
        if self._sum is None:
            self._sum, self._weight = dict.fromkeys(KEYS, 0.0), dict.fromkeys(KEYS, 0.0)
        assert self._weight is not None
        for key, value in values.items():
            if np.isfinite(value):
                self._sum[key] += value * weight
                self._weight[key] += weight
        self.tiles += 1

    def result(self) -> dict[str, float]:
        """``opensr_*`` columns (NaN when no window was computed) and ``opensr_tiles``."""
        out = {}
        for key, col in COLUMNS.items():
            w = self._weight[key] if self._weight else 0.0
            out[col] = self._sum[key] / w if w and self._sum else float("nan")
        out[TILES_COLUMN] = float(self.tiles)
        return out


__all__ = ["COLUMNS", "DEFAULT", "KEYS", "TILES_COLUMN", "OpenSRAccumulator", "OpenSRSettings", "check_scale", "min_size", "normalised_difference", "opensr_test_metrics", "phase_shift", "translate"]
