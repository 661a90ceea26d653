"""gapeval.align: known sub-pixel shifts and gains on real Sentinel-2 crops, masking of exposed borders, identity, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import fourier_shift

from gapeval.align import (
    AlignmentError,
    ShiftTooLarge,
    align_pair,
    apply_shift,
    estimate_shift,
    fit_linear,
)
from lpips_sat.errors import InputError

S2_STACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"
PAD, SIZE = 32, 128
GAINS = np.array([0.9, 1.1, 1.0, 0.95])
OFFSETS = np.array([0.01, -0.005, 0.0, 0.02])


def s2_crop(row: int, col: int, size: int = SIZE + 2 * PAD) -> np.ndarray:
    """Real S2 L1C reflectance, bands B04, B03, B02, B08, float64."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    if not S2_STACK.is_file():
        pytest.skip("shared Sentinel-2 stack not available")
    with rasterio.open(S2_STACK) as ds:
        return ds.read([4, 3, 2, 8], window=Window(col, row, size, size)).astype(np.float64) / 10000.0


def fourier_moved(big: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Content moved by ``shift`` with an exact band-limited (Fourier) shift of a larger crop, then the centre cut out:
    an implementation independent of the spline resampler under test, without wrap-around in the kept part."""
    moved = np.stack([np.fft.ifft2(fourier_shift(np.fft.fft2(b), shift)).real for b in big])
    return moved[:, PAD:PAD + SIZE, PAD:PAD + SIZE]


@pytest.mark.parametrize("where", [(200, 200), (1200, 400), (700, 900)])  # textured land crops (on flat water, noise dominates a gain fit)
@pytest.mark.parametrize("shift", [(1.3, 1.4), (1.4, 2.0), (-2.0, 0.7)])
def test_known_shift_and_gain_recovered_on_real_s2(where, shift):
    big = s2_crop(*where)
    clean = big[:, PAD:PAD + SIZE, PAD:PAD + SIZE]
    target = fourier_moved(big, shift) * GAINS[:, None, None] + OFFSETS[:, None, None]
    res = align_pair(clean, target, align="shift", harmonize="linear")
    assert (res.dy, res.dx) == pytest.approx(shift, abs=0.1)
    assert abs(res.residual_dy) <= 0.1 and abs(res.residual_dx) <= 0.1
    # target' = g target + o must undo the gains: g = 1 / GAINS, o = -OFFSETS / GAINS
    np.testing.assert_allclose(res.gain, 1.0 / GAINS, rtol=0.01)
    np.testing.assert_allclose(res.offset, -OFFSETS / GAINS, atol=0.002)
    # exposed borders masked: moving the target back by -shift uncovers at least ceil(|shift|) rows/columns
    dy, dx = shift
    rows = slice(SIZE - int(np.ceil(dy)), None) if dy > 0 else slice(0, int(np.ceil(-dy)))
    assert not res.valid[rows].any()
    assert not res.valid[:, SIZE - int(np.ceil(dx)):].any()
    assert res.valid.mean() > 0.9
    err = res.target[:, res.valid] - clean[:, res.valid]
    assert np.isnan(res.target[:, ~res.valid]).all()
    assert np.sqrt(np.mean(err ** 2)) < 0.1 * np.sqrt(np.mean((target - clean) ** 2))  # error down by > 20 dB


def test_apply_shift_matches_fourier_shift_in_the_interior_and_integer_shifts_are_exact():
    big = s2_crop(700, 900)
    img = big[:, PAD:PAD + SIZE, PAD:PAD + SIZE]
    out, ok = apply_shift(img, 1.3, -0.6)
    ref = fourier_moved(big, (1.3, -0.6))
    assert ok.sum() == (SIZE - 3) * (SIZE - 3)  # out[r] reads rows r-3..r (dy 1.3) and columns c-1..c+2 (dx -0.6)
    interior = np.abs(out[:, ok] - ref[:, ok])
    assert np.median(interior) < 2e-3 and np.isnan(out[:, ~ok]).all()
    out, ok = apply_shift(img, 2.0, -3.0)
    assert np.array_equal(out[:, 2:, :-3], img[:, :-2, 3:]) and ok[2:, :-3].all() and not ok[:2].any() and not ok[:, -3:].any()


def test_apply_shift_masks_only_the_taps_around_an_invalid_pixel():
    img = s2_crop(700, 900)[:, :64, :64]
    valid = np.ones((64, 64), bool)
    valid[30, 30] = False
    out, ok = apply_shift(img, 0.5, 0.5, valid)
    bad = np.argwhere(~ok[8:56, 8:56]) + 8
    assert len(bad) == 16  # a 4 x 4 block of outputs reads the hole
    assert {(int(r), int(c)) for r, c in bad} == {(r, c) for r in range(29, 33) for c in range(29, 33)}  # out[r] reads rows r-2..r+1


def test_estimate_shift_round_trip_and_sign():
    img = s2_crop(1500, 1500)[:, :96, :96]
    moved, ok = apply_shift(img, -1.25, 0.75)
    s = estimate_shift(moved, img, ok)
    assert (s.dy, s.dx) == pytest.approx((-1.25, 0.75), abs=0.1) and 0.5 < s.quality <= 1.0


def test_fit_linear_equals_polyfit():
    rng = np.random.default_rng(0)
    src = rng.random((3, 20, 20))
    ref = src * np.array([0.8, 1.2, 1.0])[:, None, None] + 0.05 + rng.normal(0, 0.01, src.shape)
    fit = fit_linear(src, ref)
    for b in range(3):
        g, o = np.polyfit(src[b].ravel(), ref[b].ravel(), 1)
        assert fit.gain[b] == pytest.approx(g, rel=1e-9) and fit.offset[b] == pytest.approx(o, abs=1e-9)


@pytest.mark.parametrize("harmonize", ["none", "linear", "histogram"])
@pytest.mark.parametrize("align", ["none", "shift"])
def test_identity_changes_nothing(align, harmonize):
    img = s2_crop(900, 300)[:, :128, :128].astype(np.float32)
    res = align_pair(img, img.copy(), align=align, harmonize=harmonize)
    assert res.valid.all() and res.dy == 0.0 and res.dx == 0.0
    assert np.abs(res.target - img).max() <= 1e-6


def test_errors():
    img = s2_crop(900, 300)[:, :64, :64]
    few = np.zeros((64, 64), bool)
    few[:10, :10] = True
    with pytest.raises(AlignmentError, match="only 100 valid pixels"):
        align_pair(img, img, few, align="shift")
    with pytest.raises(AlignmentError, match="only 100 valid pixels"):
        align_pair(img, img, few, align="none", harmonize="linear")
    with pytest.raises(AlignmentError, match="too small"):
        estimate_shift(img[:, :8, :8], img[:, :8, :8])
    moved, _ = apply_shift(img, 2.5, 0.0)
    with pytest.raises(ShiftTooLarge, match="more than the maximum 1 px") as exc:
        align_pair(img, moved, align="shift", max_shift=1.0)
    assert exc.value.dy == pytest.approx(2.5, abs=0.15)
    with pytest.raises(InputError, match="harmonize must be one of"):
        align_pair(img, img, harmonize="gain")
    with pytest.raises(InputError, match="one shape"):
        align_pair(img, img[:, :32])


def test_shift_affine_recovers_a_small_scale_and_rotation():
    from scipy.ndimage import affine_transform

    big = s2_crop(200, 200)
    clean = big[:, PAD:PAD + SIZE, PAD:PAD + SIZE]
    deform = np.array([[0.01, 0.006], [-0.006, 0.01]])  # 1 % scale, 0.34 degree rotation
    shift = np.array([0.7, -1.2])
    centre = np.full(2, (SIZE - 1) / 2)
    # target(w(x)) = clean(x) with w(x) = x + shift + deform (x - centre): target(y) = clean(w^-1(y)), quintic spline
    inv = np.linalg.inv(np.eye(2) + deform)
    offset = centre - inv @ (centre + shift) + PAD
    target = np.stack([affine_transform(b, inv, offset=offset, output_shape=(SIZE, SIZE), order=5) for b in big])
    res = align_pair(clean, target, align="shift+affine")
    assert (res.dy, res.dx) == pytest.approx(tuple(shift), abs=0.1)
    np.testing.assert_allclose(np.reshape(res.deform, (2, 2)), deform, atol=1e-3)
    rmse_affine = np.sqrt(np.mean((res.target[:, res.valid] - clean[:, res.valid]) ** 2))
    only_shift = align_pair(clean, target, align="shift")
    rmse_shift = np.sqrt(np.mean((only_shift.target[:, only_shift.valid] - clean[:, only_shift.valid]) ** 2))
    assert rmse_affine < 0.5 * rmse_shift
