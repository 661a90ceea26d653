"""Distortion families for 2AFC calibration and for pretraining views, on (N, C, H, W) reflectance.

Two kinds of family (see docs/model_card.md for the rationale):

* **nuisance** — what separates a faithful SR output from a real cross-sensor target: sub-pixel/1-2 px
  misregistration, small warps, radiometric gain/offset, spectral-response mixing, mild noise, haze.
* **damage** — what a metric must see: blur, down-up sampling, strong noise, hallucinated texture,
  wrong land cover, over-sharpening halos, Gibbs ringing, posterisation, omitted detail, JPEG-like blocking,
  GAN checkerboard, detector striping.

Every family maps a severity ``s`` in [0, 1] to a parameter range; higher ``s`` is always more distorted.
Functions take a *context* tensor (the patch plus a margin) so shifts bring in real pixels; callers crop
the margin afterwards with :func:`crop_margin`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]

#: Margin (px) every distortion may read beyond the patch.
MARGIN = 8


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "nuisance" | "damage"
    fn: Fn
    description: str


def _u(n: int, g: torch.Generator, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _per(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v.to(x).reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (px), reflect padding."""
    sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0]).clamp_min(1e-3)
    radius = int(math.ceil(3 * float(sig.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sig[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, K)
    n, c, h, w = x.shape
    xp = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    kh = k.repeat_interleave(c, 0).reshape(n * c, 1, 1, -1)
    y = F.conv2d(xp.reshape(1, n * c, h + 2 * radius, w + 2 * radius), kh, groups=n * c)
    y = F.conv2d(y, kh.transpose(2, 3), groups=n * c)
    return y.reshape(n, c, h, w)


def fourier_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Band-limited translation by (dy, dx) px per sample (phase ramp in the Fourier domain; circular)."""
    n, c, h, w = x.shape
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    phase = torch.exp(-2j * math.pi * (dy.double()[:, None, None] * fy + dx.double()[:, None, None] * fx))
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * phase[:, None]).real.to(x.dtype)


def _other(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Content from elsewhere: the batch rolled by one, each patch flipped/rotated so n=1 also works."""
    y = torch.roll(x, 1, 0) if x.shape[0] > 1 else x
    k = int(torch.randint(1, 4, (1,), generator=g))
    return torch.rot90(y, k, (2, 3)) if y.shape[-1] == y.shape[-2] else torch.flip(y, (2, 3))


# ------------------------------------------------------------------------------------------- nuisances
def shift(x, s, g):
    mag = 0.25 + 1.75 * s
    ang = _u(x.shape[0], g, 0, 2 * math.pi)
    return fourier_shift(x, mag * torch.sin(ang), mag * torch.cos(ang))


def warp(x, s, g):
    n = x.shape[0]
    rot = _u(n, g) * s * math.radians(1.0)
    scale = 1 + _u(n, g) * s * 0.01
    cos, sin = torch.cos(rot) * scale, torch.sin(rot) * scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)


def gain(x, s, g):
    n, c = x.shape[:2]
    gain_ = 1 + 0.12 * s[:, None] * _u(n * c, g).reshape(n, c)
    off = 0.01 * s[:, None] * _u(n * c, g).reshape(n, c)
    return x * gain_.to(x)[..., None, None] + off.to(x)[..., None, None]


def spectral(x, s, g):
    n, c = x.shape[:2]
    mix = torch.eye(c)[None] + 0.08 * s[:, None, None] * _u(n * c * c, g).reshape(n, c, c) * (1 - torch.eye(c))[None]
    mix = mix / mix.sum(2, keepdim=True)
    return torch.einsum("nij,njhw->nihw", mix.to(x), x)


def noise(x, s, g):
    sigma = 0.001 + 0.004 * s
    return x + _per(x, sigma) * torch.randn(x.shape, generator=g).to(x)


def haze(x, s, g):
    c = x.shape[1]
    # Rayleigh-like path radiance, strongest in the first (red) .. blue order of R,G,B,NIR: use wavelengths.
    lam = torch.tensor([665.0, 560.0, 490.0, 842.0][:c] + [842.0] * max(0, c - 4))
    path = 0.04 * (490.0 / lam) ** 2
    t = 1 - 0.15 * _per(x, s)
    return x * t + _per(x, s) * path.to(x).reshape(1, c, 1, 1)


# ------------------------------------------------------------------------------------------- damage
def blur(x, s, g):
    return gaussian_blur(x, 0.6 + 2.4 * s)


def downup(x, s, g):
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i, f in enumerate((1.5 + 2.5 * s).tolist()):
        small = F.interpolate(x[i : i + 1], size=(max(2, round(h / f)), max(2, round(w / f))), mode="area")
        out[i] = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0]
    return out


def noise_strong(x, s, g):
    return x + _per(x, 0.01 + 0.04 * s) * torch.randn(x.shape, generator=g).to(x)


def hallucination(x, s, g):
    other = _other(x, g)
    detail = other - gaussian_blur(other, 1.5)
    return x + _per(x, 0.5 + 1.5 * s) * detail


def _paste_boxes(x: torch.Tensor, donor: torch.Tensor, fractions: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``x`` with one random box per sample, covering ``fractions`` of its area, copied from ``donor``."""
    h, w = x.shape[-2:]
    out = x.clone()
    for i, frac in enumerate(fractions.tolist()):
        bh, bw = max(2, int(h * math.sqrt(frac))), max(2, int(w * math.sqrt(frac)))
        y0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
        out[i, :, y0 : y0 + bh, x0 : x0 + bw] = donor[i, :, y0 : y0 + bh, x0 : x0 + bw]
    return out


def landcover(x, s, g):
    return _paste_boxes(x, _other(x, g), 0.15 + 0.35 * s, g)


def sharpen(x, s, g):
    return x + _per(x, 1.0 + 3.0 * s) * (x - gaussian_blur(x, 1.5))


def ringing(x, s, g):
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h).abs()[:, None] * 2
    fx = torch.fft.fftfreq(w).abs()[None, :] * 2
    cut = 0.6 - 0.4 * s  # fraction of Nyquist kept
    mask = ((fy <= cut.reshape(-1, 1, 1)) & (fx <= cut.reshape(-1, 1, 1))).to(torch.complex64)
    return torch.fft.ifft2(torch.fft.fft2(x.to(torch.complex64)) * mask[:, None]).real.to(x.dtype)


def posterize(x, s, g):
    step = _per(x, 0.004 + 0.03 * s)
    return torch.round(x / step) * step


def omission(x, s, g):
    return _paste_boxes(x, gaussian_blur(x, 3.0), 0.2 + 0.5 * s, g)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def blocking(x, s, g):
    n, c, h, w = x.shape
    hh, ww = h // 8 * 8, w // 8 * 8
    d = _dct_matrix().to(x)
    blocks = x[..., :hh, :ww].reshape(n, c, hh // 8, 8, ww // 8, 8).permute(0, 1, 2, 4, 3, 5)
    coef = d @ blocks @ d.T
    keep = (8 - torch.round(1 + 5 * s)).long()
    idx = torch.arange(8)
    mask = ((idx[None, :, None] + idx[None, None, :]) < keep[:, None, None]).to(x)  # zig-zag-like triangle
    coef = coef * mask[:, None, None, None]
    rec = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)
    out = x.clone()
    out[..., :hh, :ww] = rec
    return out


def checkerboard(x, s, g):
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pattern = ((yy + xx) % 2 * 2 - 1).to(x)
    detail = (x - gaussian_blur(x, 1.0)).abs().mean(1, keepdim=True) + 0.004
    return x + _per(x, 0.5 + 1.5 * s) * detail * pattern


def stripes(x, s, g):
    n, c, h, w = x.shape
    col = 1 + _per(x, 0.01 + 0.05 * s).reshape(n, 1, 1, 1) * torch.randn(n, c, 1, w, generator=g).to(x)
    return x * col


def _nearest_updown(x: torch.Tensor, f: int) -> torch.Tensor:
    """Average ``f`` x ``f`` blocks, then repeat each value ``f`` x ``f`` times (nearest upsampling); edges kept."""
    h, w = x.shape[-2:]
    hh, ww = h // f * f, w // f * f
    out = x.clone()
    small = F.avg_pool2d(x[..., :hh, :ww], f)
    out[..., :hh, :ww] = small.repeat_interleave(f, -2).repeat_interleave(f, -1)
    return out


def pixelate(x, s, g):
    """Blockiness of a naive nearest-neighbour upsampling: x2 (s < 1/3), x3, x4 (s >= 2/3)."""
    out = torch.empty_like(x)
    for i, v in enumerate(s.tolist()):
        out[i] = _nearest_updown(x[i : i + 1], 2 + min(2, int(3 * v)))[0]
    return out


def median(x, s, g):
    """Median filter 3x3 (s < 0.5) or 5x5: the painterly loss of fine structure of median/denoise filters."""
    out = torch.empty_like(x)
    for i, v in enumerate(s.tolist()):
        k = 3 if v < 0.5 else 5
        r = k // 2
        xp = F.pad(x[i : i + 1], (r, r, r, r), mode="reflect")
        patches = F.unfold(xp.reshape(-1, 1, *xp.shape[-2:]), k)  # (C, k*k, H*W)
        out[i] = patches.median(dim=1).values.reshape(x.shape[1:])
    return out


#: JPEG luminance quantisation table (ITU-T T.81, Annex K, table K.1).
_JPEG_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float64)


def jpeg(x, s, g):
    """JPEG-like coding: 8x8 DCT coefficients quantised with the JPEG luminance table (quality 60 .. 10).

    Values are scaled per patch and band to 0..255 first, as an 8-bit encoder would see them.
    """
    n, c, h, w = x.shape
    hh, ww = h // 8 * 8, w // 8 * 8
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    y = ((x - lo) / span * 255.0 - 128.0).double()
    d = _dct_matrix()
    blocks = y[..., :hh, :ww].reshape(n, c, hh // 8, 8, ww // 8, 8).permute(0, 1, 2, 4, 3, 5)
    coef = d @ blocks @ d.T
    quality = 60 - 50 * s.double()
    scale = torch.where(quality < 50, 50 / quality, 2 - quality / 50)  # the IJG quality scaling
    q = (_JPEG_Q[None] * scale[:, None, None]).clamp_min(1.0).reshape(n, 1, 1, 1, 8, 8)
    coef = torch.round(coef / q) * q
    rec = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)
    out = y.clone()
    out[..., :hh, :ww] = rec
    return ((out + 128.0) / 255.0 * span.double() + lo.double()).to(x.dtype)


def seams(x, s, g):
    """Tiling seams of a tiled SR inference: each 16-32 px tile gets its own small gain/offset (1-6 %)."""
    n, c, h, w = x.shape
    out = x.clone()
    for i, v in enumerate(s.tolist()):
        tile = int(torch.randint(16, 33, (1,), generator=g))
        oy, ox = (int(t) for t in torch.randint(0, tile, (2,), generator=g))
        amp = 0.01 + 0.05 * v
        level = float(x[i].mean())
        for y0 in range(-oy, h, tile):
            for x0 in range(-ox, w, tile):
                ys, xs = slice(max(0, y0), max(0, y0 + tile)), slice(max(0, x0), max(0, x0 + tile))
                gn = 1 + amp * (2 * torch.rand(c, 1, 1, generator=g) - 1)
                off = amp * level * (2 * torch.rand(c, 1, 1, generator=g) - 1)
                out[i, :, ys, xs] = x[i, :, ys, xs] * gn.to(x) + off.to(x)
    return out


def aliasing(x, s, g):
    """Decimation by 2-3 px without a low-pass filter, then bicubic upsampling: aliased, jaggy detail."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i, v in enumerate(s.tolist()):
        f = 2 if v < 0.5 else 3
        o = int(torch.randint(0, f, (1,), generator=g))
        small = x[i : i + 1, :, o::f, o::f]
        out[i] = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0]
    return out


def gan_texture(x, s, g):
    """GAN-like hallucinated texture: band-pass noise (2-4 px blobs), modulated by local detail, added in all bands."""
    n, c, h, w = x.shape
    z = torch.randn(n, 1, h, w, generator=g).to(x)
    bp = gaussian_blur(z, 0.8) - gaussian_blur(z, 2.0)
    bp = bp / bp.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    detail = (x - gaussian_blur(x, 1.5)).abs().mean(1, keepdim=True)
    detail = gaussian_blur(detail, 2.0) + 0.002
    return x + _per(x, 0.5 + 2.0 * s) * detail * bp


def stripes_sparse(x, s, g):
    """Detector striping of a few columns (miscalibrated or failing detectors of a push-broom array): 5-30 % of the
    columns carry a gain error of 3-12 % (random sign), common to all bands or per band (half the samples each)."""
    n, c, h, w = x.shape
    frac = (0.05 + 0.25 * torch.rand(n, generator=g)).reshape(n, 1, 1, 1)
    common = (torch.rand(n, generator=g) < 0.5).reshape(n, 1, 1, 1)
    pick = torch.rand(n, c, 1, w, generator=g)
    pick = torch.where(common, pick[:, :1].expand(n, c, 1, w), pick) < frac
    sign = torch.where(torch.rand(n, 1, 1, w, generator=g) < 0.5, -1.0, 1.0)
    amp = (0.03 + 0.09 * s).reshape(n, 1, 1, 1) * (0.75 + 0.5 * torch.rand(n, 1, 1, w, generator=g))
    return x * (1 + (amp * sign * pick.float()).to(x))


def stripes_rows(x, s, g):
    """Row-wise striping (push-broom along-track banding): per-row gain noise 1-6 %."""
    n, c, h, w = x.shape
    row = 1 + _per(x, 0.01 + 0.05 * s).reshape(n, 1, 1, 1) * torch.randn(n, c, h, 1, generator=g).to(x)
    return x * row


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("shift", "nuisance", shift, "translation by 0.25-2 px in a random direction (Fourier shift)"),
    Family("warp", "nuisance", warp, "rotation up to 1 deg and scale up to 1 % (bicubic resampling)"),
    Family("gain", "nuisance", gain, "per-band gain up to 12 % and offset up to 0.01 reflectance"),
    Family("spectral", "nuisance", spectral, "band mixing up to 8 % per off-diagonal term (spectral response)"),
    Family("noise", "nuisance", noise, "Gaussian noise, sigma 0.001-0.005 reflectance"),
    Family("haze", "nuisance", haze, "thin haze: up to 15 % contrast loss plus lambda^-2 path reflectance up to 0.04"),
    Family("blur", "damage", blur, "Gaussian blur, sigma 0.6-3 px"),
    Family("downup", "damage", downup, "area downsampling by 1.5-4 then bicubic upsampling"),
    Family("noise_strong", "damage", noise_strong, "Gaussian noise, sigma 0.01-0.05 reflectance"),
    Family("hallucination", "damage", hallucination, "high-frequency texture of another place added (0.5-2x)"),
    Family("landcover", "damage", landcover, "15-50 % of the patch replaced by another place"),
    Family("sharpen", "damage", sharpen, "unsharp masking (amount 1-4, sigma 1.5): halos"),
    Family("ringing", "damage", ringing, "ideal low-pass at 60-20 % of Nyquist: Gibbs ringing"),
    Family("posterize", "damage", posterize, "reflectance quantised to steps of 0.004-0.034"),
    Family("omission", "damage", omission, "20-70 % of the patch replaced by its sigma-3 blur (lost detail)"),
    Family("blocking", "damage", blocking, "8x8 block DCT truncation (JPEG-like blocking)"),
    Family("checkerboard", "damage", checkerboard, "GAN-like 2-px checkerboard scaled by local detail"),
    Family("stripes", "damage", stripes, "detector striping: per-column gain noise 1-6 %"),
    Family("pixelate", "damage", pixelate, "nearest-neighbour pixelation (block mean, repeated) by x2, x3 or x4"),
    Family("median", "damage", median, "median filter 3x3 or 5x5"),
    Family("jpeg", "damage", jpeg, "8-bit JPEG-like coding: 8x8 DCT quantised with the JPEG table, quality 60-10"),
    Family("seams", "damage", seams, "tiling seams: 16-32 px tiles with their own gain/offset (1-6 %)"),
    Family("aliasing", "damage", aliasing, "decimation by 2-3 without low-pass, bicubic upsampling"),
    Family("gan_texture", "damage", gan_texture, "band-pass noise texture scaled by local detail (0.5-2.5x)"),
    Family("stripes_rows", "damage", stripes_rows, "row striping: per-row gain noise 1-6 %"),
    Family("stripes_sparse", "damage", stripes_sparse, "detector striping: 5-30 % of columns with a 3-12 % gain error, band-common or per band"),
)}

_V1_TRAIN = ("shift", "warp", "gain", "spectral", "noise", "blur", "downup", "noise_strong", "hallucination", "landcover", "sharpen",
             "ringing", "posterize", "omission")
_V2_TRAIN = (*_V1_TRAIN, "blocking", "stripes", "pixelate", "median", "stripes_rows")
_V2_HELDOUT = ("haze", "checkerboard", "jpeg", "seams", "aliasing", "gan_texture")

#: Protocols: which families a model may see in pretraining and calibration ("train") and which are kept for
#: validation only ("heldout"). v1 is the protocol of ``lpips-sat-s2-rn18``, frozen; v2 trains on the blockiness,
#: quantisation and striping kinds v1 missed and holds out six other families, all different in kind from the
#: training ones (a nuisance, a periodic GAN artefact, compression, tiling, aliasing, texture hallucination).
PROTOCOLS: dict[str, dict[str, tuple[str, ...]]] = {
    "v1": {"heldout": ("haze", "blocking", "checkerboard", "stripes"), "train": _V1_TRAIN},
    "v2": {"heldout": _V2_HELDOUT, "train": _V2_TRAIN},
    # v4: v2 plus sparse detector striping (a few columns with a large gain error; v2's stripes are dense and small)
    "v4": {"heldout": _V2_HELDOUT, "train": (*_V2_TRAIN, "stripes_sparse")},
}

#: Families never used for calibration or pretraining of v1: validation only (kept for the v1 recipe).
HELDOUT_FAMILIES: tuple[str, ...] = PROTOCOLS["v1"]["heldout"]
TRAIN_FAMILIES: tuple[str, ...] = PROTOCOLS["v1"]["train"]


def apply(name: str, context: torch.Tensor, severity: torch.Tensor | float, g: torch.Generator) -> torch.Tensor:
    """Apply family ``name`` at ``severity`` (scalar or per-sample, in [0, 1]) to a context batch."""
    s = torch.as_tensor(severity, dtype=torch.float32).reshape(-1).expand(context.shape[0]).clone()
    return FAMILIES[name].fn(context, s, g)


def super_resolve(x: torch.Tensor, factor: int, mtf_sigma: float | torch.Tensor = 0.0, lr_noise: float | torch.Tensor = 0.0,
                  g: torch.Generator | None = None) -> torch.Tensor:
    """A smooth SR-like output of ``x`` (N, C, H, W): optional Gaussian blur of ``mtf_sigma`` HR px (a sensor MTF), area
    reduction by ``factor``, optional Gaussian noise of ``lr_noise`` reflectance on the LR grid, bicubic up-sampling.
    ``mtf_sigma`` and ``lr_noise`` are scalars or one value per sample (0: none)."""
    h, w = x.shape[-2:]
    sigma = torch.as_tensor(mtf_sigma, dtype=x.dtype)
    lr = F.interpolate(gaussian_blur(x, sigma) if bool((sigma > 0).any()) else x, size=(h // factor, w // factor), mode="area")
    noise = torch.as_tensor(lr_noise, dtype=x.dtype)
    if bool((noise > 0).any()):
        lr = lr + _per(lr, noise) * torch.randn(lr.shape, generator=g)
    return F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)


def crop_margin(x: torch.Tensor, margin: int = MARGIN) -> torch.Tensor:
    """Remove ``margin`` px on every side."""
    return x[..., margin:-margin, margin:-margin] if margin else x
