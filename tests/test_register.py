"""Global translation registration (:mod:`lpips_sat.register`) and its use by the metric and the calibration featuriser.

Independent expectations: integer rolls and non-circular integer offsets (slices of a larger crop) are recovered
exactly; sub-pixel shifts made with the Fourier phase ramp of the distortion families (``fourier_shift``) on real
Sentinel-2 crops are recovered within 0.1 px with the documented sign; ``translate`` by whole pixels is slicing of the
reflect-padded image (NumPy's padding), by zero the identity, by a fraction a band-limited shift (Fourier phase ramp)
and linear in the image; the registering metric's spatial map equals the plain metric's map of the images aligned by
hand (whole-pixel offset: slicing, the exposed strip filled by reflection); the calibration featuriser with the heads gives the metric's distance.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import s2_crops, smooth_reflectance

from lpips_sat import LPIPSSat
from lpips_sat.errors import InputError, WeightsError
from lpips_sat.register import (
    DEAD_ZONE,
    DEFAULT_MAX_SHIFT,
    _translate_inner,
    applied_shift,
    crop,
    estimate_shift,
    exposed,
    max_shift_of,
    phase_correlation,
    register,
    translate,
)
from lpips_sat.registry import save_weights
from lpips_sat.train.distortions import MARGIN, crop_margin, fourier_shift

#: Context crops: 64 px patches plus the distortions' margin of MARGIN px on every side.
CONTEXT = 64 + 2 * MARGIN


@pytest.fixture(scope="module")
def context() -> torch.Tensor:
    """(8, 4, 80, 80) real Sentinel-2 L1C reflectance (B04, B03, B02, B08), side by side crops of the shared stack."""
    return s2_crops(8, CONTEXT)


def shifted(context: torch.Tensor, shift) -> torch.Tensor:
    """The patches of ``context`` with content moved by ``shift`` ((2,) or (N, 2) px: content at (r, c) lands at
    (r + dy, c + dx)), made as the distortion families do: Fourier shift of the context, then the margin cropped."""
    s = torch.as_tensor(shift, dtype=torch.float32).expand(context.shape[0], 2)
    return crop_margin(fourier_shift(context, s[:, 0].contiguous(), s[:, 1].contiguous()))


def sliced(context: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The patches moved by whole pixels without wrap-around: a window of the context offset by (-dy, -dx)."""
    return context[:, :, MARGIN - dy : MARGIN - dy + 64, MARGIN - dx : MARGIN - dx + 64]


@lru_cache(maxsize=None)
def metric(register: str | None = None, max_shift: float | None = None, **kwargs) -> LPIPSSat:
    return LPIPSSat.random(register=register, max_shift=max_shift, **kwargs)


# --------------------------------------------------------------------------------------------- estimate_shift
def test_integer_roll_is_recovered_exactly_per_sample() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 4, 40, 56, generator=g)  # not square: rows and columns must not be mixed up
    shifts = [(2, -1), (-3, 0), (1, 3)]
    moved = torch.stack([torch.roll(x[i], s, (1, 2)) for i, s in enumerate(shifts)])
    # phase correlation alone is exact for a circular shift; the least-squares refinement (on smoothed images with
    # reflect padding, which a circular shift does not respect) stays within 1e-3 px of it
    assert phase_correlation(moved, x).tolist() == [[2.0, -1.0], [-3.0, 0.0], [1.0, 3.0]]
    assert phase_correlation(x, moved).tolist() == [[-2.0, 1.0], [3.0, 0.0], [-1.0, -3.0]]  # the other way round
    truth = torch.tensor(shifts, dtype=torch.float32)
    assert torch.allclose(estimate_shift(moved, x), truth, atol=1e-3)
    assert torch.allclose(estimate_shift(x, moved), -truth, atol=1e-3)
    assert estimate_shift(x, x).tolist() == [[0.0, 0.0]] * 3


def test_integer_offset_of_real_crops_is_recovered_exactly(context) -> None:
    hr = crop_margin(context)
    for dy, dx in [(2, -1), (-3, 1), (0, -2)]:
        assert phase_correlation(sliced(context, dy, dx), hr).tolist() == [[float(dy), float(dx)]] * 8
        truth = torch.tensor([[float(dy), float(dx)]]).expand(8, 2)
        assert torch.allclose(estimate_shift(sliced(context, dy, dx), hr), truth, atol=0.02)  # two least-squares steps


@pytest.mark.parametrize("seed", [0, 1])
def test_subpixel_shifts_recovered_batched(context, seed: int) -> None:
    """A different random shift within +-2.5 px per sample, as the ``shift`` distortion makes it."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(8, 2, generator=g) * 5 - 2.5
    est = estimate_shift(shifted(context, truth), crop_margin(context))
    assert est.shape == (8, 2)
    err = (est - truth).abs().max()
    assert err < 0.1, f"worst error {float(err):.3f} px\n{truth}\n{est}"
    # phase correlation without its upsampled refinement finds only the integer peak; the least-squares steps alone
    # (iters) then bring it to sub-pixel precision too
    coarse = phase_correlation(shifted(context, truth), crop_margin(context), upsample=1)
    assert torch.equal(coarse, coarse.round()) and (coarse - truth).abs().max() <= 0.5 + 0.1
    assert (estimate_shift(shifted(context, truth), crop_margin(context), upsample=1) - truth).abs().max() < 0.1


def test_flat_pair_gives_zero() -> None:
    for v in (0.3, 0.1234567, 0.7):
        flat = torch.full((2, 4, 48, 48), v)
        assert estimate_shift(flat, flat).tolist() == [[0.0, 0.0]] * 2
    assert estimate_shift(torch.zeros(1, 4, 48, 48), torch.full((1, 4, 48, 48), 0.7)).tolist() == [[0.0, 0.0]]


def test_flat_against_textured_gives_zero() -> None:
    flat = torch.full((1, 4, 48, 48), 0.3)
    textured = smooth_reflectance(0, n=1)
    assert estimate_shift(flat, textured).tolist() == [[0.0, 0.0]]
    assert estimate_shift(textured, flat).tolist() == [[0.0, 0.0]]


def test_estimate_is_clamped_to_max_shift(context) -> None:
    hr = crop_margin(context)
    est = estimate_shift(sliced(context, 5, -6), hr, max_shift=3.0)
    assert float(est.abs().max()) <= 3.0
    # a true 2.8 px shift with max_shift 2.5: integer peak within 2, refined towards 2.8, then clamped to exactly 2.5
    est = estimate_shift(shifted(context, (2.8, -2.8)), hr, max_shift=2.5)
    assert est.tolist() == [[2.5, -2.5]] * 8
    assert estimate_shift(shifted(context, (0.3, -0.2)), hr, max_shift=2.5).sub(torch.tensor([0.3, -0.2])).abs().max() < 0.1


def test_estimate_shift_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        estimate_shift(torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 30))
    with pytest.raises(ValueError, match="one shape"):
        estimate_shift(torch.rand(4, 32, 32), torch.rand(4, 32, 32))


# ------------------------------------------------------------------------------------------------- translate
def test_translate_by_whole_pixels_is_slicing_of_the_reflect_padded_image() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 2, 20, 24, generator=g)
    shift = torch.tensor([[2.0, -1.0], [-3.0, 0.0], [0.0, 3.0]])
    out = translate(x, shift)
    r = 6  # any pad of at least the largest shift
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    for i, (dy, dx) in enumerate(shift.int().tolist()):
        # out(r, c) = x(r + dy, c + dx): exact, including the border filled by reflection
        assert torch.equal(out[i], torch.from_numpy(xp[i, :, r + dy : r + dy + 20, r + dx : r + dx + 24]))
    # on the interior, plain slicing of the unpadded image
    assert torch.equal(out[0, :, :-2, 1:], x[0, :, 2:, :-1])


def test_translate_by_zero_is_the_identity() -> None:
    x = smooth_reflectance(3, n=2)
    assert torch.equal(translate(x, torch.zeros(2, 2)), x)
    x64 = x.double()
    assert torch.equal(translate(x64, torch.zeros(2, 2)), x64)
    assert translate(x, torch.zeros(2, 2)).dtype == x.dtype


def test_translate_subpixel_matches_the_fourier_shift_of_a_band_limited_image() -> None:
    """A sum of low-frequency sinusoids periodic on the grid: the Fourier phase ramp shifts it exactly; Lanczos-3 must
    agree away from the reflect-padded border, with the sign ``out(r, c) = x(r + dy, c + dx)``."""
    h = w = 48
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    img = 0.2 + 0.05 * torch.sin(2 * math.pi * (2 * yy / h + 1 * xx / w)) + 0.03 * torch.cos(2 * math.pi * (3 * xx / w - 1 * yy / h) + 0.4)
    x = img.float().expand(2, 2, h, w).contiguous()
    shift = torch.tensor([[0.5, -1.25], [-2.3, 0.7]])
    out = translate(x, shift)
    expected = fourier_shift(x, -shift[:, 0], -shift[:, 1])  # content moves by -shift
    m = 8
    err = (crop(out, m) - crop(expected, m)).abs().max()
    assert err < 2e-3, float(err)
    wrong_sign = (crop(translate(x, -shift), m) - crop(expected, m)).abs().max()
    assert wrong_sign > 10 * err


def test_translate_is_linear() -> None:
    x, y = smooth_reflectance(4, n=3), smooth_reflectance(5, n=3)
    shift = torch.tensor([[0.37, -1.6], [2.0, 0.0], [-0.9, 2.45]])
    a, b = 1.7, -0.6
    assert torch.allclose(translate(a * x + b * y, shift), a * translate(x, shift) + b * translate(y, shift), atol=1e-6)


def test_translate_then_estimate_gives_zero(context) -> None:
    g = torch.Generator().manual_seed(7)
    truth = torch.rand(8, 2, generator=g) * 5 - 2.5
    moving, hr = shifted(context, truth), crop_margin(context)
    est = estimate_shift(moving, hr)
    m = int(DEFAULT_MAX_SHIFT)  # away from the strips a shift exposes (filled by reflection)
    back = estimate_shift(crop(translate(moving, est), m), crop(hr, m))
    assert back.abs().max() <= 0.1
    aligned, ref, shift = register(moving, hr)
    assert torch.equal(shift, est) and aligned.shape == ref.shape == (8, 4, 64, 64)
    # both images meet halfway; outside the exposed strips they are each other's match
    half = applied_shift(est) / 2
    strip = (exposed(half, 64, 64) | exposed(-half, 64, 64)).expand_as(aligned)
    assert torch.equal(aligned[~strip], translate(moving, half)[~strip]) and torch.equal(ref[~strip], translate(hr, -half)[~strip])
    assert torch.equal(aligned[strip], ref[strip])  # the strips add nothing
    assert (crop(aligned, m) - crop(ref, m)).abs().mean() < 0.2 * (crop(moving, m) - crop(hr, m)).abs().mean()


def test_shifts_below_the_dead_zone_are_left_alone(context) -> None:
    """Near-precision shifts are not applied (a fractional resampling would low-pass fine damage), larger ones fully,
    with a continuous ramp between (DEAD_ZONE)."""
    lo, hi = DEAD_ZONE
    s = torch.tensor([[0.0, 0.0], [lo * 0.9, -lo * 0.5], [-(lo + hi) / 2, 0.0], [0.0, hi], [2.0, -1.0]])
    applied = applied_shift(s)
    assert torch.equal(applied[:2], torch.zeros(2, 2)) and torch.equal(applied[3:], s[3:])
    assert 0 < float(applied[2, 0].abs()) < float(s[2, 0].abs())
    hr = crop_margin(context)[:2]
    near = shifted(context[:2], (0.1, 0.0))  # estimated near 0.1 px: registration leaves both images as they are
    a, b, est = register(near, hr)
    assert float(est.abs().max()) < lo and torch.equal(a, near) and torch.equal(b, hr)


@pytest.mark.parametrize("m,max_shift", [(6, 2.5), (4, 1.0), (2, 1.6)])
def test_inner_translation_is_the_cropped_full_one(m: int, max_shift: float) -> None:
    """The estimator resamples only the core it reads; the result is the full translation's core (the last case has
    kernels wider than the margin and takes the full path)."""
    x = smooth_reflectance(9, n=3)
    shift = torch.tensor([[0.37, -1.0], [0.0, 0.0], [-1.0, 0.61]]) * max_shift
    assert torch.allclose(_translate_inner(x, shift, m), crop(translate(x, shift), m), atol=1e-6)


def test_stacked_estimate_matches_the_pairwise_one(context) -> None:
    """The estimator runs both images as one stacked batch with cached constants; pair by pair, at other sizes and
    search radii in between (cache keys), it gives the same shifts."""
    g = torch.Generator().manual_seed(11)
    truth = torch.rand(4, 2, generator=g) * 4 - 2
    moving, hr = shifted(context[:4], truth), crop_margin(context[:4])
    batch = estimate_shift(moving, hr)
    for i in range(4):
        estimate_shift(crop(moving[i : i + 1], 5), crop(hr[i : i + 1], 5), max_shift=1.0)  # other cache entries
        estimate_shift(moving[i : i + 1], hr[i : i + 1], max_shift=1.0)
        assert torch.allclose(estimate_shift(moving[i : i + 1], hr[i : i + 1]), batch[i : i + 1], atol=1e-4)
    x = crop_margin(context[:2])
    rolled = torch.roll(x, (2, -2), (2, 3))
    assert torch.equal(phase_correlation(rolled, x, max_shift=1.0, upsample=1).abs().amax(), torch.tensor(1.0))
    assert torch.equal(phase_correlation(rolled, x, upsample=1), torch.tensor([[2.0, -2.0]] * 2))


def test_constants_cached_in_inference_mode_serve_a_later_loss(context) -> None:
    """The estimator's cached constants may be created under torch.inference_mode (a metric scored first); a later
    call with a graph (the metric as a loss) must still work and give the same distances."""
    from lpips_sat import register as reg

    reg._grid.cache_clear()
    reg._gaussian.cache_clear()
    m = LPIPSSat()
    hr = crop_margin(context[:2])
    sr = shifted(context[:2], (1.3, -0.7))
    with torch.inference_mode():
        d0 = m(sr, hr)
    x = sr.clone().requires_grad_(True)
    d = m(x, hr)
    d.sum().backward()
    assert torch.allclose(d.detach(), d0) and float(x.grad.abs().sum()) > 0


def test_translate_rejects_a_shift_too_large_for_the_image() -> None:
    with pytest.raises(ValueError, match="too large"):
        translate(torch.rand(1, 1, 8, 8), torch.tensor([[5.0, 0.0]]))


def test_crop() -> None:
    x = torch.arange(2 * 36.0).reshape(1, 2, 6, 6)
    assert torch.equal(crop(x, 0), x)
    assert torch.equal(crop(x, 2), x[..., 2:4, 2:4])


def test_max_shift_of_weights_metadata() -> None:
    assert max_shift_of({}) == 0
    assert max_shift_of({"register": "none", "max_shift": "abc"}) == 0
    assert max_shift_of({"register": "translation"}) == 3.0
    assert max_shift_of({"register": "translation", "max_shift": "1.5"}) == 1.5
    for bad in ({"register": "bogus"}, {"register": "translation", "max_shift": "abc"}, {"register": "translation", "max_shift": "0"},
                {"register": "translation", "max_shift": "nan"}, {"register": "translation", "max_shift": "-2"}):
        with pytest.raises(ValueError):
            max_shift_of(bad)


# ------------------------------------------------------------------------------------------ registering metric
def test_identity_is_exactly_zero() -> None:
    x = smooth_reflectance(8, n=3, size=64)
    m = metric("translation")
    assert torch.equal(m(x, x), torch.zeros(3))
    assert torch.equal(m(x, x, spatial=True), torch.zeros(3, 1, 64, 64))


def test_subpixel_shift_costs_far_less_when_registered(context) -> None:
    hr = crop_margin(context)[:4]
    sr = shifted(context[:4], (1.5, -0.5))
    reg, plain = metric("translation")(sr, hr), metric("none")(sr, hr)
    # what remains is the 1-2 px strip the shift exposes (filled by reflection) and the resampling
    assert torch.all(reg < 0.3 * plain), (reg, plain)
    # a real damage is still seen: noise of 0.01 reflectance costs more than the registered shift
    noisy = hr + 0.01 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    assert torch.all(metric("translation")(noisy, hr) > 2 * reg)


def test_shift_beyond_max_shift_is_not_removed(context) -> None:
    hr = crop_margin(context)[:4]
    m = metric("translation", 3.0)
    small, large = m(shifted(context[:4], (1.5, 0.0)), hr), m(shifted(context[:4], (6.0, 0.0)), hr)
    assert torch.all(large > 20 * small), (small, large)
    _, est = m(shifted(context[:4], (6.0, 0.0)), hr, registration=True)
    assert float(est.abs().max()) <= 3.0


def test_registering_distance_is_batch_independent(context) -> None:
    hr = crop_margin(context)[:4]
    shifts = torch.tensor([[0.0, 0.0], [2.4, -1.1], [-0.6, 0.3], [3.0, 2.0]])
    sr = shifted(context[:4], shifts)
    m = metric("translation")
    together, est = m(sr, hr, registration=True)
    for i in range(4):
        alone, est_i = m(sr[i : i + 1], hr[i : i + 1], registration=True)
        assert torch.allclose(alone, together[i : i + 1], rtol=0, atol=1e-5)
        assert torch.allclose(est_i, est[i : i + 1], rtol=0, atol=1e-5)
    perm = [2, 0, 3, 1]
    assert torch.allclose(m(sr[perm], hr[perm]), together[perm], rtol=0, atol=1e-5)


def test_register_none_gives_the_plain_metric_exactly() -> None:
    x, y = smooth_reflectance(1, n=2, size=48), smooth_reflectance(2, n=2, size=48)
    plain = LPIPSSat.random()
    assert not plain.registers and not metric("none").registers
    assert torch.equal(metric("none")(x, y), plain(x, y))
    assert torch.equal(metric("none")(x, y, spatial=True), plain(x, y, spatial=True))
    reg = metric("translation")
    assert reg.registers and reg.max_shift == DEFAULT_MAX_SHIFT and "register='translation'" in repr(reg)
    assert metric("translation", 1.5).max_shift == 1.5
    assert not torch.equal(reg(x, y), plain(x, y))  # the crop changes the numbers


def test_registration_output_has_the_documented_sign(context) -> None:
    hr, sr = crop_margin(context)[:3], shifted(context[:3], (1.5, -0.75))
    for m in (metric("translation"), metric("none")):  # reported by both; removed only by the registering one
        d, s = m(sr, hr, registration=True)
        assert d.shape == (3,) and s.shape == (3, 2)
        assert (s - torch.tensor([1.5, -0.75])).abs().max() < 0.1
        assert torch.equal(d, m(sr, hr))
        _, back = m(hr, sr, registration=True)
        assert (back + torch.tensor([1.5, -0.75])).abs().max() < 0.1


def test_gradient_flows_to_sr(context) -> None:
    hr = crop_margin(context)[:2]
    sr = (shifted(context[:2], (0.8, -1.3)) * 0.95).requires_grad_(True)
    loss = metric("translation")(sr, hr).sum()
    loss.backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all()
    core = crop(sr.grad, 3)
    assert float(core.abs().sum()) > 0 and bool((core.abs().flatten(1).sum(1) > 0).all())
    # the loss path (graph on sr only) gives the one-pass numbers
    sr2, hr2 = sr.detach().requires_grad_(True), hr.clone().requires_grad_(True)
    d2 = metric("translation")(sr2, hr2)
    assert torch.allclose(d2.sum(), loss.detach(), rtol=1e-5)
    d2.sum().backward()
    assert torch.allclose(sr2.grad, sr.grad, rtol=1e-3, atol=1e-4 * float(sr.grad.abs().max()))


def test_spatial_map_keeps_the_size_and_equals_the_plain_map_of_the_registered_pair(context) -> None:
    """Whole-pixel offset plus a per-band gain: the registering metric's map and distance are the plain metric's on the
    pair that :func:`register` returns (both images normalised as the metric does), and the map averages to the distance."""
    hr = crop_margin(context)[:2]
    gain = torch.tensor([1.2, 1.0, 0.95, 0.85]).reshape(1, 4, 1, 1)
    sr = sliced(context[:2], 2, -1) * gain
    m = metric("translation")
    d, shift = m(sr, hr, registration=True)
    assert torch.allclose(shift, torch.tensor([[2.0, -1.0]] * 2), atol=1e-3)
    full = m(sr, hr, spatial=True)
    assert full.shape == (2, 1, 64, 64)
    a, b, _ = register((sr - 0.1) / 0.1, (hr - 0.1) / 0.1)  # LPIPSSat.random's global normalisation
    plain = metric("none")
    by_hand_map = plain.distance(plain.features(a, prepared=True), plain.features(b, prepared=True), spatial=True, size=(64, 64))[0]
    assert torch.allclose(full, by_hand_map, rtol=1e-4, atol=1e-6)
    assert torch.allclose(full.mean(dim=(1, 2, 3)), d, rtol=1e-4)
    total, parts = m(sr, hr, spatial=True, per_layer=True)
    assert torch.equal(total, full) and len(parts) == 5 and all(p.shape == (2, 1, 64, 64) for p in parts)


def test_per_layer_radiometry_registration_tuple_order(context) -> None:
    hr = crop_margin(context)[:2]
    sr = shifted(context[:2], (-1.2, 0.9)) * 1.1
    m = metric("translation")
    out = m(sr, hr, per_layer=True, radiometry=True, registration=True)
    assert isinstance(out, tuple) and len(out) == 4
    total, parts, radiometry, shift = out
    assert total.shape == (2,) and len(parts) == 5 and radiometry.shape == (2,) and shift.shape == (2, 2)
    assert torch.allclose(torch.stack(parts).sum(0), total, rtol=1e-6)
    assert torch.allclose(total, m(sr, hr), rtol=1e-6)
    assert torch.equal(radiometry, m(sr, hr, radiometry=True)[1])
    assert (shift - torch.tensor([-1.2, 0.9])).abs().max() < 0.1
    assert torch.all(radiometry > 0)  # the 10 % gain is reported apart


def test_per_image_norm_metric_registers_too(context) -> None:
    hr = crop_margin(context)[:2]
    sr = shifted(context[:2], (1.5, 1.0)) * 1.3  # a gain, which per-image normalisation removes
    reg = metric("translation", input_norm="per-image")(sr, hr)
    plain = metric("none", input_norm="per-image")(sr, hr)
    assert torch.all(reg < 0.3 * plain), (reg, plain)


# ------------------------------------------------------------------------------------------------ option errors
def test_max_shift_too_large_for_the_image_is_an_input_error() -> None:
    x = smooth_reflectance(9, n=1, size=32)
    with pytest.raises(InputError, match="max_shift"):
        LPIPSSat.random(register="translation", max_shift=30)(x, x)
    assert LPIPSSat.random(register="translation", max_shift=3)(x, x).tolist() == [0.0]


@pytest.mark.parametrize("kwargs", [{"register": "bogus"}, {"register": "Translation"}, {"max_shift": -1}, {"max_shift": 0},
                                    {"max_shift": float("nan")}, {"max_shift": float("inf")}, {"max_shift": "2"},
                                    {"register": "translation", "max_shift": -1}, {"register": "translation", "max_shift": True},
                                    {"max_shift": 2}, {"register": "none", "max_shift": 2}])
def test_bad_options_raise_input_error(kwargs) -> None:
    with pytest.raises(InputError):
        LPIPSSat.random(**kwargs)


def _weights_file(folder: Path, name: str, **meta: str) -> Path:
    tensors, metadata = LPIPSSat.random().export()
    metadata.update(meta)
    path = folder / f"{name}.safetensors"
    save_weights(path, tensors, metadata, dtype=torch.float32)
    return path


@pytest.mark.parametrize("meta", [{"register": "bogus"}, {"register": "translation", "max_shift": "abc"},
                                  {"register": "translation", "max_shift": "-3"}, {"register": "translation", "max_shift": "nan"}])
def test_bad_weights_metadata_raise_weights_error(tmp_path: Path, meta: dict) -> None:
    path = _weights_file(tmp_path, "bad", **meta)
    with pytest.raises(WeightsError):
        LPIPSSat(path)


def test_weights_metadata_decides_the_default_form(tmp_path: Path) -> None:
    plain = LPIPSSat(_weights_file(tmp_path, "plain"))
    reg = LPIPSSat(_weights_file(tmp_path, "reg", register="translation", max_shift="2"))
    default_shift = LPIPSSat(_weights_file(tmp_path, "reg3", register="translation"))
    assert not plain.registers and reg.registers and reg.max_shift == 2.0 and default_shift.max_shift == DEFAULT_MAX_SHIFT
    x, y = smooth_reflectance(11, n=2, size=48), smooth_reflectance(12, n=2, size=48)
    # the metadata is equivalent to the option on the same tensors, and register="none" turns it off exactly
    opt = LPIPSSat(tmp_path / "plain.safetensors", register="translation", max_shift=2.0)
    assert torch.equal(reg(x, y), opt(x, y))
    off = LPIPSSat(tmp_path / "reg.safetensors", register="none")
    assert not off.registers and torch.equal(off(x, y), plain(x, y))
    assert LPIPSSat(tmp_path / "reg.safetensors", max_shift=1.0).max_shift == 1.0
    # the registration metadata survives export
    assert reg.export()[1]["register"] == "translation" and reg.export()[1]["max_shift"] == "2"


# --------------------------------------------------------------------------------------- calibration featuriser
def test_featurizer_registers_and_reuses_reference_taps(context) -> None:
    from lpips_sat.train.calibrate import Featurizer

    m = metric("translation")
    ref = crop_margin(context)[:3]
    x = shifted(context[:3], torch.tensor([[1.5, 0.0], [-0.7, 2.2], [0.4, -1.9]]))
    norm = ([0.1] * 4, [0.1] * 4)  # LPIPSSat.random's global normalisation
    reg = Featurizer(m.backbone, *norm, register=3.0)
    plain = Featurizer(m.backbone, *norm)
    d_reg, d_plain = reg.diffs(ref, x), plain.diffs(ref, x)
    assert d_reg.shape == d_plain.shape == (3, sum(m.backbone.channels))
    assert torch.all(d_reg.sum(1) < 0.3 * d_plain.sum(1))
    assert torch.equal(reg.diffs(reg.taps(ref), x), d_reg)
    assert torch.equal(plain.diffs(plain.taps(ref), x), d_plain)
    # with the heads, the columns give the registering metric's distance
    heads = torch.cat([h.flatten() for h in m.heads])
    assert torch.allclose((d_reg * heads).sum(1), m(x, ref), rtol=1e-5, atol=1e-9)


def test_export_carries_the_instances_registration(tmp_path: Path) -> None:
    """save_pretrained/export write the form the instance uses, so a reloaded metric gives the same numbers."""
    x, y = smooth_reflectance(3, n=2, size=48), smooth_reflectance(4, n=2, size=48)
    for register_, max_shift in (("translation", 2.0), ("none", None)):
        m = LPIPSSat.random(register=register_, max_shift=max_shift)
        folder = m.save_pretrained(tmp_path / register_)
        again = LPIPSSat.from_pretrained(folder)
        assert again.registers == m.registers and again.max_shift == m.max_shift
        assert torch.equal(again(x, y), m(x, y))
