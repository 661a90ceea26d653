"""Global translation between two images, estimated and removed before the distance.

Misregistration is a nuisance of cross-sensor pairs (Sentinel-2 against PlanetScope or aerial imagery: up to about one
S2 pixel, i.e. several pixels at the SR-output scale), not a quality loss of an SR output. Weights whose metadata
says ``register: translation`` (v5 and later) register the two images before the backbone; the estimated
shift is reported on its own (``LPIPSSat.forward(..., registration=True)``), as the radiometric difference is.

* :func:`estimate_shift` -- phase correlation (Kuglin & Hines 1975) of the band-summed cross-power spectrum, Hann
  window, magnitude normalised to the power 0.5, integer peak searched within ``max_shift``, refined on a
  ``1/upsample`` px grid by an upsampled DFT (Guizar-Sicairos, Thurman & Fienup 2008, "Efficient subpixel image
  registration algorithms"), then by Gauss-Newton steps on the least-squares misfit (Lucas & Kanade 1981).
  Batched; no gradient (the estimate is a constant of a loss).
* :func:`translate` -- separable Lanczos-3 resampling with one kernel per image (grouped convolution), reflect padding.
  Linear in ``x``, so a loss back-propagates through it.
* :func:`register` -- both of them: shifts below a quarter pixel or so are left alone (:data:`DEAD_ZONE`, a ramp), and
  the two images meet halfway, each moved by half the shift, so both carry the same interpolation. Both keep their
  size: a strip a shift exposes has no counterpart and takes the other image's pixels (it adds nothing to the
  distance; filled by reflection instead, it made a registered 2 px shift of a low-texture 64 px patch cost nearly as
  much as the unregistered shift). Cropping that border from both instead was measured and dropped: the ResNet's
  strided stem is not shift-invariant, and on held-out S2 patches (lpips-sat-s2-rn18-v4) cropping 1, 3 or 5 px halved
  the distance of JPEG-like and block-DCT damage (8x8 blocks aligned with the image) and the noise family lost 3-9
  points on held-out judgments (v5 model card).

``gapeval.align`` registers whole rasters with nodata masks in NumPy (``gapeval score --align shift``); this module
serves the metric on tensors, where the same estimator runs batched on the device.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

#: Modes of the ``register`` weights metadata and :class:`~lpips_sat.LPIPSSat` option.
REGISTER_MODES = ("none", "translation")
#: Default largest correction (px) of ``register="translation"``.
DEFAULT_MAX_SHIFT = 3.0
#: Exponent of the cross-power normalisation (1: classic phase correlation, 0: plain cross-correlation); 0.5 as
#: ``gapeval.align.PHASE_NORM``, which measured it on shifted Sentinel-2 crops.
PHASE_NORM = 0.5
#: Lanczos kernel order (taps per side).
LANCZOS_A = 3


class _Grid(NamedTuple):
    """Constants of :func:`phase_correlation` for one image size, search radius and device (cached: at 64 px their
    construction cost as much as the transforms)."""

    window: torch.Tensor  # (H, W) separable Hann window
    inside: torch.Tensor  # (H, W) integer lags within max_shift
    ry: torch.Tensor  # (H,) signed integer lags of the rows
    rx: torch.Tensor  # (W,) of the columns
    fy: torch.Tensor  # (H,) frequencies (cycles / px) of the full spectrum's rows
    fx: torch.Tensor  # (W // 2 + 1,) of the half spectrum's columns
    weight: torch.Tensor  # (W // 2 + 1,) 2 for the half-spectrum columns that stand for two, else 1


def _hann(n: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(n, periodic=False, device=device) if n > 1 else torch.ones(n, device=device)


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int, max_shift: float, device: torch.device) -> _Grid:
    ry = torch.fft.fftfreq(h, d=1.0 / h, device=device)
    rx = torch.fft.fftfreq(w, d=1.0 / w, device=device)
    fx = torch.fft.rfftfreq(w, device=device)
    # the correlation is real: each half-spectrum column but the first (and the Nyquist one) stands for two
    weight = torch.full_like(fx, 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    return _Grid(window=_hann(h, device)[:, None] * _hann(w, device)[None, :],
                 inside=(ry.abs()[:, None] <= max_shift) & (rx.abs()[None, :] <= max_shift),
                 ry=ry, rx=rx, fy=torch.fft.fftfreq(h, device=device), fx=fx, weight=weight)


@torch.no_grad()
def estimate_shift(moving: torch.Tensor, reference: torch.Tensor, max_shift: float = DEFAULT_MAX_SHIFT, upsample: int = 4,
                   iters: int = 2) -> torch.Tensor:
    """(N, 2) shifts ``(dy, dx)`` in px of ``moving`` relative to ``reference`` (both (N, C, H, W)): content at (r, c)
    in the reference appears at (r + dy, c + dx) in ``moving``. Each component lies in ``[-max_shift, max_shift]``;
    a pair without common texture (flat images) gets (0, 0).

    Both images are smoothed (Gaussian, :data:`SMOOTH_SIGMA`); :func:`phase_correlation` finds the peak; ``iters`` Gauss-Newton steps of the least-squares misfit
    (Lucas & Kanade 1981) then refine it. Phase correlation alone is biased by up to ~0.4 px between a smooth and a
    sharp image of one place (an SR output and its target: the Hann window and the phases of frequencies only one of
    them holds); the least-squares optimum is not, for any symmetric blur. The two images go through every step as
    one stacked batch (at 64 px the cost is the number of operations, not their size).

    Example:
        >>> x = torch.rand(1, 2, 48, 48)
        >>> [round(v, 2) for v in estimate_shift(torch.roll(x, (2, -1), (2, 3)), x)[0].tolist()]
        [2.0, -1.0]
    """
    _check_pair(moving, reference)
    n = moving.shape[0]
    if n == 0:  # an empty batch has no shift to measure
        return torch.zeros(0, 2, device=moving.device)
    mov, ref = moving.float(), reference.float()
    f = max(1, min(mov.shape[-2:]) // ESTIMATE_SIZE)
    if f > 1:  # a global shift is measured as well on block means: the cost stays that of a 64-px image
        mov, ref = F.avg_pool2d(mov, f), F.avg_pool2d(ref, f)
    both = torch.cat([mov, ref])
    flat = _flat(both)
    both = _smooth(both)
    shift = _correlation_peak(both, n, max_shift / f, upsample)
    if iters:
        shift = _refine(both[:n], both[n:], shift, max_shift / f, iters)
    return torch.where((flat[:n] | flat[n:])[:, None], torch.zeros_like(shift), shift * f)


def _check_pair(moving: torch.Tensor, reference: torch.Tensor) -> None:
    if moving.shape != reference.shape or moving.ndim != 4:
        raise ValueError(f"a shift is measured between two (N, C, H, W) tensors of one shape, got {tuple(moving.shape)} and {tuple(reference.shape)}")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(N,) images without texture: standard deviation at most 1e-6 (plus 1e-6 of the mean magnitude), i.e. the float32
    rounding left by subtracting a constant image's mean; such a pair has no shift to measure."""
    mean = x.mean(dim=(2, 3), keepdim=True)  # per band: constant bands of different values are still flat
    return (x - mean).square().mean(dim=(1, 2, 3)).sqrt() <= 1e-6 * (1.0 + mean.abs().mean(dim=(1, 2, 3)))


#: Images of at least twice this side are estimated on block means of ``side // ESTIMATE_SIZE`` px (a shift of d px is
#: one of d / f block-mean px, as both images are averaged on the same blocks): 256-px images then cost what 64-px ones
#: do, at about 0.01 block px (0.04 px) of precision.
ESTIMATE_SIZE = 64
#: Gaussian sigma (px) of the smoothing both images get before :func:`estimate_shift`: noise would otherwise dominate
#: the least-squares misfit of a low-texture pair, whose minimum then sits where the interpolation smooths the noise
#: most (about half a pixel), not at the true shift.
SMOOTH_SIGMA = 1.0


@functools.lru_cache(maxsize=8)
def _gaussian(sigma: float, device: torch.device) -> torch.Tensor:
    r = int(math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _smooth(x: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) float32 with reflect padding (radius ``3 sigma``)."""
    k = _gaussian(sigma, x.device)
    r = (len(k) - 1) // 2
    n, c, h, w = x.shape
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")  # channels as groups: ~7x faster than a batch of 1-channel images
    y = F.conv2d(y, k.reshape(1, 1, -1, 1).expand(n * c, 1, -1, 1), groups=n * c)
    y = F.conv2d(y, k.reshape(1, 1, 1, -1).expand(n * c, 1, 1, -1), groups=n * c)
    return y.reshape(n, c, h, w)


@torch.no_grad()
def phase_correlation(moving: torch.Tensor, reference: torch.Tensor, max_shift: float = DEFAULT_MAX_SHIFT, upsample: int = 16) -> torch.Tensor:
    """(N, 2) shifts as :func:`estimate_shift`, by phase correlation alone, to ``1/upsample`` px."""
    _check_pair(moving, reference)
    return _correlation_peak(torch.cat([moving.float(), reference.float()]), moving.shape[0], max_shift, upsample)


def _correlation_peak(both: torch.Tensor, n: int, max_shift: float, upsample: int) -> torch.Tensor:
    """:func:`phase_correlation` of ``both[:n]`` (moving) against ``both[n:]`` (reference), stacked float32."""
    h, w = both.shape[-2:]
    grid = _grid(h, w, float(max_shift), both.device)
    # real images: the half spectrum (rfft2) holds everything; (N, H, W//2+1), peaks at +shift
    spec = torch.fft.rfft2((both - both.mean(dim=(2, 3), keepdim=True)) * grid.window)
    cross = (spec[:n] * spec[n:].conj()).sum(1)
    mag = cross.abs()
    ok = mag.flatten(1).sum(1) > 1e-12
    cross = cross / mag.clamp_min(1e-30) ** PHASE_NORM
    corr = torch.fft.irfft2(cross, s=(h, w))
    idx = corr.masked_fill(~grid.inside, -math.inf).flatten(1).argmax(1)
    peak = torch.stack([grid.ry[idx // w], grid.rx[idx % w]], 1)  # (N, 2) integer peak
    if upsample > 1:
        steps = torch.arange(-upsample, upsample + 1, device=both.device, dtype=torch.float32) / upsample  # +-1 px
        ys, xs = peak[:, :1] + steps, peak[:, 1:] + steps  # (N, K)
        ey = torch.exp(2j * math.pi * ys[:, :, None] * grid.fy[None, None, :])  # (N, K, H)
        ex = torch.exp(2j * math.pi * grid.fx[None, :, None] * xs[:, None, :]) * grid.weight[None, :, None]  # (N, W//2+1, K)
        fine = (ey @ cross @ ex).real  # (N, K, K): the correlation on the fine grid
        k = fine.shape[-1]
        j = fine.flatten(1).argmax(1)
        peak = torch.stack([ys.gather(1, (j // k)[:, None])[:, 0], xs.gather(1, (j % k)[:, None])[:, 0]], 1)
    peak = peak.clamp(-max_shift, max_shift)
    return torch.where(ok[:, None], peak, torch.zeros_like(peak))


def _refine(moving: torch.Tensor, reference: torch.Tensor, shift: torch.Tensor, max_shift: float, iters: int) -> torch.Tensor:
    """Gauss-Newton steps on ``sum (reference - g * translate(moving, shift) - o)^2`` over the core that neither a shift
    within ``max_shift`` nor the smoothing's padding reaches, with a per-band gain ``g >= 0`` and offset ``o`` refitted
    by least squares before each step (two sensors' radiometry, or per-image statistics of two different windows, do
    not bias the shift); each step at most 1 px, the result within ``max_shift``; a flat pair keeps its shift.
    Only the core and a one-pixel rim for the gradients is resampled (:func:`_translate_inner`)."""
    m = int(math.ceil(max_shift - 1e-9)) + int(math.ceil(3 * SMOOTH_SIGMA)) + 1
    ref = crop(reference, m)
    ref_c = ref - ref.mean(dim=(2, 3), keepdim=True)
    for _ in range(iters):
        out = _translate_inner(moving, shift, m - 1)  # = crop(translate(moving, shift), m - 1)
        gy = (out[..., 2:, 1:-1] - out[..., :-2, 1:-1]) * 0.5  # central differences on the core
        gx = (out[..., 1:-1, 2:] - out[..., 1:-1, :-2]) * 0.5
        core = out[..., 1:-1, 1:-1]
        core = core - core.mean(dim=(2, 3), keepdim=True)
        var = core.square().mean(dim=(2, 3), keepdim=True)
        gain = torch.where(var > 1e-12, (core * ref_c).mean(dim=(2, 3), keepdim=True) / var.clamp_min(1e-12), torch.ones_like(var)).clamp_min(0.0)
        gy, gx, res = gy * gain, gx * gain, ref_c - gain * core
        a, b, c = (gy * gy).sum((1, 2, 3)), (gy * gx).sum((1, 2, 3)), (gx * gx).sum((1, 2, 3))
        u, v = (gy * res).sum((1, 2, 3)), (gx * res).sum((1, 2, 3))
        det = a * c - b * b
        ok = det > 1e-9 * (a + c).square().clamp_min(1e-30)
        det = torch.where(ok, det, torch.ones_like(det))
        step = torch.stack([(c * u - b * v) / det, (a * v - b * u) / det], 1).clamp(-1.0, 1.0)
        shift = (shift + torch.where(ok[:, None], step, torch.zeros_like(step))).clamp(-max_shift, max_shift)
    return shift


def _lanczos(t: torch.Tensor, a: int = LANCZOS_A) -> torch.Tensor:
    out = torch.sinc(t) * torch.sinc(t / a)
    return torch.where(t.abs() < a, out, torch.zeros_like(out))


def _kernel(taps: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(N, len(taps)) Lanczos weights at ``taps - d``; an exact one-hot where ``d`` is a whole number of pixels."""
    t = taps[None, :] - d
    return torch.where(d == d.round(), (t == 0).to(t.dtype), _lanczos(t))


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Resample each image of ``x`` (N, C, H, W) so that ``out(r, c) = x(r + dy, c + dx)`` with ``shift`` (N, 2):
    undoes a shift measured by :func:`estimate_shift`. Separable Lanczos-3 (kernels normalised to sum 1), reflect
    padding; exact for integer shifts."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    ky, kx, radius = _kernels(x, shift)
    if radius >= min(h, w):
        raise ValueError(f"a shift of {float(shift.abs().max()):g} px is too large for {h}x{w} px images")
    xp = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(F.conv2d(xp, ky, groups=n * c), kx, groups=n * c).reshape(n, c, h, w)


def _translate_inner(x: torch.Tensor, shift: torch.Tensor, m: int) -> torch.Tensor:
    """``crop(translate(x, shift), m)`` without the padding and the resampling of the rim it drops (the kernels reach
    ``radius <= m`` px, so no padded value enters the result)."""
    n, c, h, w = x.shape
    ky, kx, radius = _kernels(x, shift)
    if radius > m:
        return crop(translate(x, shift), m)
    xi = crop(x, m - radius).reshape(1, n * c, h - 2 * (m - radius), w - 2 * (m - radius))
    return F.conv2d(F.conv2d(xi, ky, groups=n * c), kx, groups=n * c).reshape(n, c, h - 2 * m, w - 2 * m)


def _kernels(x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Grouped-convolution weights of :func:`translate` for ``x`` (N, C, H, W): (N*C, 1, 2R+1, 1) rows and
    (N*C, 1, 1, 2R+1) columns, normalised to sum 1, and their radius R (the largest shift's ceiling plus the Lanczos
    order)."""
    c = x.shape[1]
    shift = shift.to(device=x.device, dtype=torch.float32)
    radius = int(math.ceil(float(shift.abs().max()))) + LANCZOS_A
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    ky, kx = (_kernel(taps, shift[:, k : k + 1]) for k in (0, 1))
    ky, kx = ky / ky.sum(1, keepdim=True), kx / kx.sum(1, keepdim=True)  # (N, 2R+1)
    ky = ky.repeat_interleave(c, 0).to(x.dtype).reshape(-1, 1, 2 * radius + 1, 1)
    kx = kx.repeat_interleave(c, 0).to(x.dtype).reshape(-1, 1, 1, 2 * radius + 1)
    return ky, kx, radius


def crop(x: torch.Tensor, m: int) -> torch.Tensor:
    """Remove ``m`` px on every side of (..., H, W)."""
    return x[..., m : x.shape[-2] - m, m : x.shape[-1] - m] if m else x


def exposed(shift: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) mask of the pixels that :func:`translate` by ``shift`` takes from outside the image (the strip a
    shift exposes: ``r + dy`` or ``c + dx`` beyond the first or last row or column)."""
    r = torch.arange(h, device=shift.device, dtype=shift.dtype)
    c = torch.arange(w, device=shift.device, dtype=shift.dtype)
    ry, cx = r[None, :] + shift[:, :1], c[None, :] + shift[:, 1:]
    out_y = (ry < -1e-6) | (ry > h - 1 + 1e-6)
    out_x = (cx < -1e-6) | (cx > w - 1 + 1e-6)
    return out_y[:, None, :, None] | out_x[:, None, None, :]


#: Shifts (px, the larger component) below ``DEAD_ZONE[0]`` are not applied, above ``DEAD_ZONE[1]`` fully, linearly in
#: between. Below a quarter pixel the estimate is near its own precision on damaged or another acquisition's images,
#: and a fractional Lanczos shift low-passes a little: applied, such shifts hid fine damage (median filtering,
#: posterisation) from the blur-sensitive backbone. With v4's heads, the real cross-acquisition check at 10 m read
#: 84.7 % without the dead zone and 85.3 % with it (v4 unregistered: 86.1 %), measured while building v5.
DEAD_ZONE = (0.15, 0.5)


def applied_shift(shift: torch.Tensor, zone: tuple[float, float] = DEAD_ZONE) -> torch.Tensor:
    """The part of an estimated (N, 2) shift that :func:`register` removes: none below ``zone[0]`` px, all above
    ``zone[1]``, a linear ramp between (continuous, so a distance does not jump at a threshold)."""
    size = shift.abs().amax(1, keepdim=True)
    return shift * ((size - zone[0]) / (zone[1] - zone[0])).clamp(0.0, 1.0)


def register(moving: torch.Tensor, reference: torch.Tensor, max_shift: float = DEFAULT_MAX_SHIFT,
             upsample: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Meet halfway: ``moving`` moves by half the :func:`applied_shift` and ``reference`` by minus half, so both carry
    the same interpolation (a fractional Lanczos shift low-passes a little, which a blur-sensitive backbone would
    otherwise charge to the moved image alone) and the distance is symmetric up to the estimate. Both keep their size;
    where one image's strip is exposed (no counterpart), it takes the other's pixels, so the strip adds nothing to a
    distance (as gapeval fills nodata from the target).

    Returns ``(moving aligned, reference aligned, shift (N, 2))``; ``shift`` is the full estimate of
    :func:`estimate_shift` (what is reported), of which :func:`applied_shift` is removed.
    """
    shift = estimate_shift(moving.detach(), reference.detach(), max_shift, upsample)
    half = applied_shift(shift) / 2
    moved = (half != 0).any(1)
    if not bool(moved.any()):  # the usual case of a registered pair: nothing to resample (the same numbers, exactly)
        return moving, reference, shift
    idx = moved.nonzero().squeeze(1)
    h, w = moving.shape[-2:]
    half = half[idx]
    a, b = translate(moving[idx], half), translate(reference[idx], -half)
    ea, eb = exposed(half, h, w).to(a.device), exposed(-half, h, w).to(a.device)
    a, b = torch.where(ea, b, a), torch.where(eb & ~ea, a, b)
    if len(idx) == len(moved):
        return a, b, shift
    return moving.index_copy(0, idx, a), reference.index_copy(0, idx, b.to(reference.dtype)), shift


def max_shift_of(metadata: dict, name: str = "weights") -> float:
    """The registration of a weights file: its ``max_shift`` when ``register`` is ``translation`` (v5 and later), else 0."""
    mode = str(metadata.get("register", "none"))
    if mode not in REGISTER_MODES:
        raise ValueError(f"{name}: unknown register {mode!r} in the weights metadata; known: {REGISTER_MODES}")
    if mode == "none":
        return 0.0
    try:
        value = float(metadata.get("max_shift", DEFAULT_MAX_SHIFT))
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: max_shift must be a positive number in the weights metadata, got {metadata.get('max_shift')!r}")
    return value
