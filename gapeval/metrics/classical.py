"""Classical full-reference image metrics with a validity mask: PSNR, SSIM, SAM, ERGAS, RMSE, MAE.

Inputs are numpy arrays (bands, rows, cols) in reflectance and a (rows, cols) boolean ``valid`` mask;
invalid pixels (nodata, NaN/inf) take no part in any metric. Sums are kept in float64 so that
tile-by-tile accumulation (:class:`ClassicalAccumulator`) equals the whole-image value.

Implemented here rather than taken from torchmetrics/scikit-image because neither takes a mask; the tests
check every metric against scikit-image / torchmetrics on fully valid images and against the same
computation on the valid pixels only. Formulas and sources: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from lpips_sat.errors import InputError

#: SSIM constants of Wang et al. (2004): Gaussian window sigma 1.5 truncated at 3.5 sigma (11 taps), K1, K2.
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03
#: Radius of the SSIM window (5 px): pixels closer than this to the image edge are not averaged (as scikit-image).
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)


def _check(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and return float64 arrays and the mask, restricted to pixels finite in both images."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise InputError(f"Expected `pred` and `target` of the same (bands, rows, cols) shape, got {pred.shape} and {target.shape}")
    finite = np.isfinite(pred).all(axis=0) & np.isfinite(target).all(axis=0)
    if valid is None:
        valid = finite
    else:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != pred.shape[1:]:
            raise InputError(f"Expected `valid` of shape {pred.shape[1:]}, got {valid.shape}")
        valid = valid & finite
    return pred.astype(np.float64), target.astype(np.float64), valid


# ----------------------------------------------------------------------------------------------- error sums


@dataclass
class ErrorSums:
    """Per-band sums over valid pixels, enough for PSNR, RMSE, MAE and ERGAS: count, squared and absolute
    errors, and the target's sum (for ERGAS' band means)."""

    n: int
    sse: np.ndarray
    sae: np.ndarray
    sum_target: np.ndarray

    @classmethod
    def zeros(cls, bands: int) -> ErrorSums:
        return cls(0, np.zeros(bands), np.zeros(bands), np.zeros(bands))

    def __iadd__(self, other: ErrorSums) -> ErrorSums:
        self.n += other.n
        self.sse += other.sse
        self.sae += other.sae
        self.sum_target += other.sum_target
        return self

    def mse(self) -> np.ndarray:
        """Per-band mean squared error (NaN when no valid pixel)."""
        return self.sse / self.n if self.n else np.full(self.sse.shape, np.nan)

    def psnr(self, data_range: float) -> tuple[float, np.ndarray]:
        """``(overall, per_band)`` PSNR in dB: ``10 log10(R^2 / MSE)``, overall from the MSE pooled over bands."""
        mse = self.mse()
        with np.errstate(divide="ignore"):
            return float(10 * np.log10(data_range**2 / mse.mean())), 10 * np.log10(data_range**2 / mse)

    def rmse(self) -> tuple[float, np.ndarray]:
        """``(overall, per_band)`` root mean squared error (overall pooled over bands)."""
        mse = self.mse()
        return float(np.sqrt(mse.mean())), np.sqrt(mse)

    def mae(self) -> tuple[float, np.ndarray]:
        """``(overall, per_band)`` mean absolute error."""
        mae = self.sae / self.n if self.n else np.full(self.sae.shape, np.nan)
        return float(mae.mean()), mae

    def ergas(self, ratio: float) -> float:
        """ERGAS = ``100 * ratio * sqrt(mean_k(MSE_k / mu_k^2))``, ``ratio`` = h / l (HR / LR pixel size, e.g. 1/4)."""
        if not self.n:
            return float("nan")
        mu = self.sum_target / self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(100.0 * ratio * np.sqrt(np.mean(self.mse() / mu**2)))


def error_sums(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> ErrorSums:
    """:class:`ErrorSums` of ``pred`` against ``target`` over the ``valid`` pixels."""
    p, t, v = _check(pred, target, valid)
    d = p[:, v] - t[:, v]
    return ErrorSums(int(v.sum()), (d * d).sum(axis=1), np.abs(d).sum(axis=1), t[:, v].sum(axis=1))


def psnr(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over valid pixels, MSE pooled over bands.

    Args:
        pred, target: (bands, rows, cols) arrays. valid: (rows, cols) mask (default: finite pixels).
        data_range: declared peak-to-peak range of the data (e.g. 1.0 for reflectance). Never guessed.
    Example:
        >>> import numpy as np
        >>> t = np.zeros((1, 4, 4)); p = t + 0.1
        >>> round(psnr(p, t, data_range=1.0), 6)
        20.0

    References:
        Standard definition; matches ``skimage.metrics.peak_signal_noise_ratio`` on fully valid images.
    """
    if data_range <= 0:
        raise InputError(f"data_range must be positive, got {data_range}")
    return error_sums(pred, target, valid).psnr(data_range)[0]


def rmse(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Root mean squared error over valid pixels and bands (data units)."""
    return error_sums(pred, target, valid).rmse()[0]


def mae(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean absolute error over valid pixels and bands (data units)."""
    return error_sums(pred, target, valid).mae()[0]


def ergas(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None, *, ratio: float) -> float:
    """ERGAS (relative dimensionless global error in synthesis), lower is better.

    ``100 * (h/l) * sqrt(1/K * sum_k RMSE_k^2 / mu_k^2)`` with ``ratio = h/l`` the ratio of the high- to the
    low-resolution pixel size (0.25 for x4 super-resolution) and ``mu_k`` the target's mean of band k.
    References: L. Wald, "Quality of high resolution synthesised images: is there a simple criterion?", 2000.
    """
    if not ratio > 0:
        raise InputError(f"ERGAS ratio h/l must be positive, got {ratio}")
    return error_sums(pred, target, valid).ergas(ratio)


# ----------------------------------------------------------------------------------------------------- SSIM


def ssim_map(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None, *, data_range: float) -> np.ndarray:
    """Per-band SSIM map (bands, rows, cols), float64, NaN at invalid pixels.

    Local statistics are Gaussian-weighted (sigma 1.5, 11 taps, reflect at edges) over *valid* neighbours
    only (normalised convolution: ``mu = G*(m x) / G*m``), population covariances, ``C1 = (K1 R)^2``,
    ``C2 = (K2 R)^2``. With every pixel valid this is exactly Wang et al. (2004) as in scikit-image
    (``gaussian_weights=True, use_sample_covariance=False``).
    """
    if data_range <= 0:
        raise InputError(f"data_range must be positive, got {data_range}")
    p, t, v = _check(pred, target, valid)
    m = v.astype(np.float64)

    def g(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    w = g(m)
    ok = v & (w > 0)
    wsafe = np.where(w > 0, w, 1.0)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = np.full(p.shape, np.nan)
    for k in range(p.shape[0]):
        x, y = np.where(v, p[k], 0.0), np.where(v, t[k], 0.0)
        mx, my = g(m * x) / wsafe, g(m * y) / wsafe
        sxx = g(m * x * x) / wsafe - mx * mx
        syy = g(m * y * y) / wsafe - my * my
        sxy = g(m * x * y) / wsafe - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        out[k] = np.where(ok, s, np.nan)
    return out


def interior_mask(rows: slice, cols: slice, height: int, width: int, radius: int = SSIM_RADIUS) -> np.ndarray:
    """True for pixels of the image block ``rows`` x ``cols`` at least ``radius`` px from the image edges."""
    r = np.arange(rows.start, rows.stop)
    c = np.arange(cols.start, cols.stop)
    return ((r >= radius) & (r < height - radius))[:, None] & ((c >= radius) & (c < width - radius))[None, :]


def ssim(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None, *, data_range: float) -> tuple[float, np.ndarray]:
    """``(mean over bands, per band)`` masked SSIM: the SSIM map averaged over valid pixels at least
    :data:`SSIM_RADIUS` px from the image edges (as scikit-image crops its border).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((2, 32, 32))
        >>> float(ssim(x, x, data_range=1.0)[0])
        1.0
    """
    smap = ssim_map(pred, target, valid, data_range=data_range)
    h, w = smap.shape[1:]
    keep = interior_mask(slice(0, h), slice(0, w), h, w) & np.isfinite(smap).all(axis=0)
    if not keep.any():
        return float("nan"), np.full(smap.shape[0], np.nan)
    per_band = smap[:, keep].mean(axis=1)
    return float(per_band.mean()), per_band


# ------------------------------------------------------------------------------------------------------ SAM


def sam_sums(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, int]:
    """Sum of spectral angles (degrees) over valid pixels whose spectra are both non-zero, and their count."""
    p, t, v = _check(pred, target, valid)
    a, b = p[:, v], t[:, v]
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    keep = (na > 0) & (nb > 0)
    cos = (a[:, keep] * b[:, keep]).sum(axis=0) / (na[keep] * nb[keep])
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).sum()), int(keep.sum())


def sam(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Spectral angle mapper: mean angle in degrees between the spectra of ``pred`` and ``target`` per pixel.

    ``arccos(<p, t> / (|p| |t|))`` averaged over valid pixels with non-zero spectra.
    References: Kruse et al., "The spectral image processing system (SIPS)", 1993.

    Example:
        >>> import numpy as np
        >>> t = np.ones((2, 3, 3)); p = t.copy(); p[1] = 0
        >>> round(sam(p, t), 6)
        45.0
    """
    total, n = sam_sums(pred, target, valid)
    return total / n if n else float("nan")


# ---------------------------------------------------------------------------------------------- accumulator


@dataclass
class ClassicalAccumulator:
    """Accumulates every classical metric over image windows; ``result()`` equals the whole-image values.

    Each ``update`` gets a window read with an SSIM halo and the slices of its *core* (the part this window
    is responsible for); cores of successive windows must tile the image without overlap.
    """

    bands: Sequence[str]
    data_range: float
    ratio: float | None = None  # ERGAS h/l; None -> ERGAS is NaN
    sums: ErrorSums = field(init=False)
    ssim_sum: np.ndarray = field(init=False)
    ssim_n: int = field(init=False, default=0)
    sam_sum: float = field(init=False, default=0.0)
    sam_n: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.data_range <= 0:
            raise InputError(f"data_range must be positive, got {self.data_range}")
        self.sums = ErrorSums.zeros(len(self.bands))
        self.ssim_sum = np.zeros(len(self.bands))

    def update(
        self,
        pred: np.ndarray,
        target: np.ndarray,
        valid: np.ndarray,
        core: tuple[slice, slice] | None = None,
        interior: np.ndarray | None = None,
    ) -> None:
        """Add one window. ``core``: slices of the core in the arrays; ``interior``: core-shaped mask of pixels
        far enough from the image edges for SSIM (default: all)."""
        rs, cs = core if core is not None else (slice(None), slice(None))
        pc, tc, vc = pred[:, rs, cs], target[:, rs, cs], valid[rs, cs]
        self.sums += error_sums(pc, tc, vc)
        total, n = sam_sums(pc, tc, vc)
        self.sam_sum += total
        self.sam_n += n
        smap = ssim_map(pred, target, valid, data_range=self.data_range)[:, rs, cs]
        keep = np.isfinite(smap).all(axis=0) & (interior if interior is not None else True)
        self.ssim_sum += smap[:, keep].sum(axis=1)
        self.ssim_n += int(keep.sum())

    @property
    def n_valid(self) -> int:
        return self.sums.n

    def result(self) -> dict[str, float]:
        """Every metric: ``psnr``, ``ssim``, ``sam_deg``, ``ergas``, ``rmse``, ``mae`` and per-band columns."""
        out: dict[str, float] = {}
        ps, ps_b = self.sums.psnr(self.data_range)
        ss_b = self.ssim_sum / self.ssim_n if self.ssim_n else np.full(len(self.bands), np.nan)
        rm, rm_b = self.sums.rmse()
        ma, ma_b = self.sums.mae()
        out["psnr"], out["ssim"] = ps, float(ss_b.mean())
        out["sam_deg"] = self.sam_sum / self.sam_n if self.sam_n else float("nan")
        out["ergas"] = self.sums.ergas(self.ratio) if self.ratio else float("nan")
        out["rmse"], out["mae"] = rm, ma
        for name, values in (("psnr", ps_b), ("ssim", ss_b), ("rmse", rm_b), ("mae", ma_b)):
            for band, value in zip(self.bands, values):
                out[f"{name}_{band}"] = float(value)
        return out
