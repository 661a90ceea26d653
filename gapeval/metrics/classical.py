"""Classical full-reference image metrics with a validity mask: PSNR, SSIM, SAM, ERGAS, RMSE, MAE.

Inputs are numpy arrays (bands, rows, cols) in reflectance and a (rows, cols) boolean ``valid`` mask;
invalid pixels (nodata, NaN/inf) take no part in any metric. Sums are kept in float64 so that
tile-by-tile accumulation (:class:`ClassicalAccumulator`) equals the whole-image value.

Implemented here rather than taken from torchmetrics/scikit-image because neither takes a mask; the tests
check every metric against scikit-image / torchmetrics on fully valid images and against the same
computation on the valid pixels only. Formulas and sources: ``docs/metrics.md``.
"""

from __future__ import annotations

import functools
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
    return _error_sums(*_check(pred, target, valid))


def _error_sums(p: np.ndarray, t: np.ndarray, v: np.ndarray) -> ErrorSums:
    """:func:`error_sums` on arrays already checked by :func:`_check` (float64, mask of finite valid pixels).

    A fully valid window reduces the plain arrays over (rows, cols) instead of a boolean-mask copy: the same values
    summed in numpy's pairwise order rather than the copy's sequential one (last-digit differences only)."""
    n = int(np.count_nonzero(v))
    if n == v.size:
        d, tv, axes = p - t, t, (1, 2)
    else:
        d, tv, axes = p[:, v] - t[:, v], t[:, v], 1
    sq = d * d
    np.abs(d, out=d)
    return ErrorSums(n, sq.sum(axis=axes), d.sum(axis=axes), tv.sum(axis=axes))


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
    return _ssim_map(*_check(pred, target, valid), data_range)


@functools.cache
def _filtered_one() -> float:
    """The SSIM Gaussian filter of an all-ones image (every pixel equal: the kernel's sum as the filter adds it)."""
    ones = gaussian_filter(np.ones((4 * SSIM_RADIUS + 3,) * 2), SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")
    if not (ones == ones[0, 0]).all():  # pragma: no cover - would mean scipy's filter is position dependent
        raise AssertionError("Gaussian filter of ones is not constant")
    return float(ones[0, 0])


def _ssim_map(p: np.ndarray, t: np.ndarray, v: np.ndarray, data_range: float) -> np.ndarray:
    """:func:`ssim_map` on arrays already checked by :func:`_check`.

    The five local moments of a band are filtered in one call on a (5, rows, cols) stack (sigma 0 along the
    stack axis: the same separable passes as five separate calls). ``x`` and ``y`` are zero off the mask, so the
    masked products ``m x``, ``m x y``, ... equal the plain ones; a fully valid window also skips the ``where``."""
    full = bool(v.all())
    sigma = (0.0, SSIM_SIGMA, SSIM_SIGMA)
    if full:  # G*1 is the same constant at every pixel (reflect mode): filter a small block of ones instead
        wsafe: float | np.ndarray = _filtered_one()
        ok = v
    else:
        w = gaussian_filter(v.astype(np.float64), SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")
        ok = v & (w > 0)
        wsafe = np.where(w > 0, w, 1.0)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = np.empty(p.shape)
    stack = np.empty((5, *p.shape[1:]))
    moments = np.empty_like(stack)
    for k in range(p.shape[0]):
        x, y = stack[0], stack[1]
        if full:
            x[...], y[...] = p[k], t[k]
        else:
            np.copyto(x, np.where(v, p[k], 0.0))
            np.copyto(y, np.where(v, t[k], 0.0))
        np.multiply(x, x, out=stack[2])
        np.multiply(y, y, out=stack[3])
        np.multiply(x, y, out=stack[4])
        gaussian_filter(stack, sigma, truncate=SSIM_TRUNCATE, mode="reflect", output=moments)
        if not (full and wsafe == 1.0):  # dividing by exactly 1.0 changes nothing
            moments /= wsafe
        mx, my, sxx, syy, sxy = moments
        mxy = mx * my
        sxx -= mx * mx
        syy -= my * my
        sxy -= mxy
        # s = ((2 mx my + c1)(2 sxy + c2)) / ((mx^2 + my^2 + c1)(sxx + syy + c2)), same operation order as written
        num = 2 * mx
        num *= my
        num += c1
        sxy *= 2
        sxy += c2
        num *= sxy
        mx *= mx
        my *= my
        mx += my
        mx += c1
        sxx += syy
        sxx += c2
        mx *= sxx
        np.divide(num, mx, out=out[k])
    if not ok.all():
        out[:, ~ok] = np.nan
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
    return _sam_sums(*_check(pred, target, valid))


def _sam_sums(p: np.ndarray, t: np.ndarray, v: np.ndarray) -> tuple[float, int]:
    """:func:`sam_sums` on arrays already checked by :func:`_check`."""
    a, b = (p, t) if v.all() else (p[:, v], t[:, v])  # (bands, rows, cols) views or (bands, n) copies
    na, nb = np.sqrt((a * a).sum(axis=0)), np.sqrt((b * b).sum(axis=0))  # as np.linalg.norm(axis=0)
    keep = (na > 0) & (nb > 0)
    if keep.all():
        cos = (a * b).sum(axis=0)
        na *= nb
    else:
        cos = (a[:, keep] * b[:, keep]).sum(axis=0)
        na = na[keep] * nb[keep]
    cos /= na
    np.clip(cos, -1.0, 1.0, out=cos)
    return float(np.degrees(np.arccos(cos, out=cos), out=cos).sum()), int(np.count_nonzero(keep))


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
        p, t, v = _check(pred, target, valid)  # converted and checked once for every metric
        pc, tc, vc = p[:, rs, cs], t[:, rs, cs], v[rs, cs]
        self.sums += _error_sums(pc, tc, vc)
        total, n = _sam_sums(pc, tc, vc)
        self.sam_sum += total
        self.sam_n += n
        smap = _ssim_map(p, t, v, self.data_range)[:, rs, cs]
        keep = np.isfinite(smap).all(axis=0)
        if interior is not None:
            keep &= interior
        self.ssim_sum += smap.sum(axis=(1, 2)) if keep.all() else smap[:, keep].sum(axis=1)
        self.ssim_n += int(np.count_nonzero(keep))

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
