"""Consistency of a super-resolved (SR) image with its low-resolution (LR) input, in the spirit of opensr-test.

- Reflectance consistency: mean absolute difference between SR area-averaged onto the LR grid and LR.
- Spectral consistency: mean spectral angle (degrees) between SR on the LR grid and LR.
- Spatial consistency: sub-pixel translation between SR on the LR grid and LR by phase correlation
  (Guizar-Sicairos et al. 2008 upsampled DFT refinement), in LR pixels.
- Correctness: each high-frequency patch is classed as *improvement* (SR close to HR), *omission*
  (SR close to LR upsampled: detail left out) or *hallucination* (far from both) with the opensr-test
  scores of distances normalised by the LR-to-HR distance; the fractions of patches in each class.

Sources: Aybar et al. (2024), "A Comprehensive Benchmark for Optical Remote Sensing Image Super-Resolution"
(opensr-test, its documentation of the correctness scores); Guizar-Sicairos, Thurman & Fienup (2008),
"Efficient subpixel image registration algorithms". Written here from the published formulas. Formulas:
``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gapeval.align import phase_correlation
from gapeval.metrics.classical import _check, error_sums, sam_sums

#: opensr-test's correctness parameters (lambda of improvement, omission, hallucination), opensr-test >= 0.2.
CORRECTNESS_LAMBDAS = (0.8, 0.8, 0.4)
#: Patches whose LR-to-HR mean absolute difference is below this (reflectance) hold no detail to recover. About
#: twice the per-patch effect of Sentinel-2 L1C noise (~0.001); the dark marsh example has median 0.0026.
HF_THRESHOLD = 0.002
#: Smallest LR tile (px) on which a shift is estimated; and the least valid fraction a tile/patch needs.
MIN_SHIFT_TILE, MIN_VALID_FRACTION = 16, 0.5


# ------------------------------------------------------------------------------------------- correctness


def correctness_scores(d_im: np.ndarray, d_om: np.ndarray, lambdas: Sequence[float] = CORRECTNESS_LAMBDAS) -> np.ndarray:
    """opensr-test scores (lower = closer) of normalised distances, stacked (3, ...): improvement, omission,
    hallucination.

    With ``H = d_im + d_om - 1``: improvement ``d_im + d_om (1 - exp(-l_im H))``, omission
    ``d_om + d_im (1 - exp(-l_om H))``, hallucination ``exp(-l_ha d_im d_om)``; ``d_im`` = d(SR, HR) / d(LR, HR),
    ``d_om`` = d(SR, LR) / d(LR, HR).
    """
    l_im, l_om, l_ha = lambdas
    h = d_im + d_om - 1.0
    return np.stack([d_im + d_om * (1 - np.exp(-l_im * h)), d_om + d_im * (1 - np.exp(-l_om * h)), np.exp(-l_ha * d_im * d_om)])


def _patch_means(x: np.ndarray, valid: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over valid pixels and bands of each ``patch`` x ``patch`` block of ``x`` (bands, rows, cols), and
    the blocks' valid fractions (edge blocks are padded with invalid pixels)."""
    c, h, w = x.shape
    ph, pw = -(-h // patch), -(-w // patch)
    xs = np.zeros((c, ph * patch, pw * patch))
    vs = np.zeros((ph * patch, pw * patch))
    xs[:, :h, :w] = np.where(valid, x, 0.0)
    vs[:h, :w] = valid
    total = xs.reshape(c, ph, patch, pw, patch).sum(axis=(0, 2, 4))
    count = vs.reshape(ph, patch, pw, patch).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / (count * c), count / (patch * patch)


def correctness_counts(
    sr: np.ndarray,
    hr: np.ndarray,
    lr_up: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    patch: int = 8,
    threshold: float = HF_THRESHOLD,
    lambdas: Sequence[float] = CORRECTNESS_LAMBDAS,
) -> np.ndarray:
    """Counts of high-frequency patches classed (improvement, omission, hallucination) for one image block.

    Distance: mean absolute difference over a patch's valid pixels and bands (opensr-test's default L1).
    A patch counts when at least half its pixels are valid and d(LR_up, HR) > ``threshold``.
    """
    s, h, v = _check(sr, hr, valid)
    lu, _, v = _check(lr_up, hr, v)
    d_ref, frac = _patch_means(np.abs(lu - h), v, patch)
    d_im, _ = _patch_means(np.abs(s - h), v, patch)
    d_om, _ = _patch_means(np.abs(s - lu), v, patch)
    keep = (frac >= MIN_VALID_FRACTION) & (d_ref > threshold)
    if not keep.any():
        return np.zeros(3, np.int64)
    cls = np.argmin(correctness_scores(d_im[keep] / d_ref[keep], d_om[keep] / d_ref[keep], lambdas), axis=0)
    return np.bincount(cls, minlength=3).astype(np.int64)


# ------------------------------------------------------------------------------------------- accumulator


@dataclass
class ConsistencyAccumulator:
    """LR-consistency and correctness of one SR image, accumulated over windows.

    ``update_lr`` takes blocks on the LR grid (SR area-averaged onto it, and LR); ``update_hr`` takes blocks
    on the HR grid (SR, HR, LR upsampled). ``result()`` gives ``refl_l1`` (+ per band), ``spectral_sam_deg``,
    ``shift_dy``/``shift_dx``/``shift_px`` (LR px, weighted mean over LR tiles), ``improvement``,
    ``omission``, ``hallucination`` (fractions) and ``tc_patches`` (patches classed).
    """

    bands: Sequence[str]
    patch: int = 8
    threshold: float = HF_THRESHOLD
    lambdas: Sequence[float] = CORRECTNESS_LAMBDAS
    _sums: object = field(init=False, default=None)
    _sam: list = field(init=False, default_factory=lambda: [0.0, 0])
    _shift: list = field(init=False, default_factory=lambda: [0.0, 0.0, 0.0])
    _counts: np.ndarray = field(init=False, default_factory=lambda: np.zeros(3, np.int64))

    def update_lr(self, sr_on_lr: np.ndarray, lr: np.ndarray, valid: np.ndarray) -> None:
        """Add one LR-grid block: reflectance and spectral differences, and a shift estimate if large enough."""
        sums = error_sums(sr_on_lr, lr, valid)
        if self._sums is None:
            self._sums = sums
        else:
            self._sums += sums
        total, n = sam_sums(sr_on_lr, lr, valid)
        self._sam[0] += total
        self._sam[1] += n
        if min(valid.shape) >= MIN_SHIFT_TILE and valid.mean() >= MIN_VALID_FRACTION:
            a = np.where(valid, lr.mean(axis=0), np.nan)
            b = np.where(valid, sr_on_lr.mean(axis=0), np.nan)
            dy, dx = phase_correlation(a, b)
            weight = float(valid.sum())
            self._shift[0] += dy * weight
            self._shift[1] += dx * weight
            self._shift[2] += weight

    def update_hr(self, sr: np.ndarray, hr: np.ndarray, lr_up: np.ndarray, valid: np.ndarray) -> None:
        """Add one HR-grid block (its patch grid must start on a multiple of ``patch``)."""
        self._counts += correctness_counts(sr, hr, lr_up, valid, patch=self.patch, threshold=self.threshold, lambdas=self.lambdas)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._sums is not None and self._sums.n:
            l1, l1_b = self._sums.mae()
        else:
            l1, l1_b = float("nan"), np.full(len(self.bands), np.nan)
        out["refl_l1"] = l1
        for band, value in zip(self.bands, l1_b):
            out[f"refl_l1_{band}"] = float(value)
        out["spectral_sam_deg"] = self._sam[0] / self._sam[1] if self._sam[1] else float("nan")
        if self._shift[2]:
            dy, dx = self._shift[0] / self._shift[2], self._shift[1] / self._shift[2]
            out["shift_dy"], out["shift_dx"], out["shift_px"] = dy, dx, float(np.hypot(dy, dx))
        else:
            out["shift_dy"] = out["shift_dx"] = out["shift_px"] = float("nan")
        n = int(self._counts.sum())
        frac = self._counts / n if n else np.full(3, np.nan)
        out["improvement"], out["omission"], out["hallucination"] = (float(f) for f in frac)
        out["tc_patches"] = float(n)
        return out
