"""gapeval.degrade: MTF model, geometry of (non-integer) resampling, noise, quantisation, band transforms,
histogram matching, the CLI and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from gapeval import cli
from gapeval.degrade import (
    BandTransform,
    DegradeConfig,
    box_mtf,
    degrade_array,
    fit_band_transform,
    gaussian_kernel1d,
    gaussian_mtf,
    gaussian_sigma_for_mtf,
    get_profile,
    histogram_match,
    kernel_transfer,
    quantize,
    target_grid,
)
from lpips_sat.errors import InputError

UTM = CRS.from_epsg(32618)
S2_STACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"


def _sinusoid_amplitude(lr: np.ndarray, f: float, pixel: float, keep: slice) -> float:
    """Amplitude of the f-cycles-per-unit sinusoid along columns of ``lr`` (least squares on the ``keep`` columns)."""
    x = (np.arange(lr.shape[-1]) + 0.5) * pixel
    design = np.column_stack([np.sin(2 * np.pi * f * x), np.cos(2 * np.pi * f * x), np.ones_like(x)])[keep]
    coef = np.linalg.lstsq(design, lr[lr.shape[0] // 2, keep], rcond=None)[0]
    return float(np.hypot(coef[0], coef[1]))


# ---------------------------------------------------------------------------------------------- MTF
@pytest.mark.parametrize("mtf", [0.15, 0.25, 0.30])
def test_blur_kernel_transfer_at_nyquist_matches_profile(mtf):
    ratio = 10  # HR pixel 1 m, LR GSD 10 m: Nyquist = 1/20 cycles per HR pixel
    f_n = 1 / (2 * ratio)
    sigma = gaussian_sigma_for_mtf(mtf, ratio, includes_footprint=True)
    gauss = gaussian_kernel1d(sigma)
    box = np.ones(ratio) / ratio  # the area average over one LR pixel, on the HR grid
    system = np.convolve(gauss, box)
    assert kernel_transfer(system, f_n) == pytest.approx(mtf, rel=0.01)
    assert kernel_transfer(gauss, f_n) == pytest.approx(mtf / (2 / np.pi), rel=1e-3)
    # Gaussian-only convention (Wald protocol): the blur kernel alone hits the value
    alone = gaussian_kernel1d(gaussian_sigma_for_mtf(mtf, ratio, includes_footprint=False))
    assert kernel_transfer(alone, f_n) == pytest.approx(mtf, rel=1e-3)


def test_mtf_not_reachable_with_footprint_is_an_error():
    with pytest.raises(InputError, match="2/pi"):
        gaussian_sigma_for_mtf(0.7, 10.0)
    with pytest.raises(InputError):
        gaussian_sigma_for_mtf(1.2, 10.0, includes_footprint=False)


@pytest.mark.parametrize("ratio", [4.0, 10 / 3])
def test_end_to_end_contrast_transfer_of_s2_profile(ratio):
    """A sinusoid at half the LR Nyquist frequency keeps Gaussian x box of its contrast after the s2 profile."""
    f = 1 / (4 * ratio)
    w = 480
    x = np.arange(w) + 0.5
    img = np.repeat((0.3 + 0.1 * np.sin(2 * np.pi * f * x))[None, None, :], 48, axis=1).astype(np.float32)
    out = degrade_array(img, transform=Affine(1, 0, 1000, 0, -1, 5000), crs=UTM, config=get_profile("s2", scale=ratio, snr=None, quantize=False))
    n = out.data.shape[-1]
    measured = _sinusoid_amplitude(out.data[0], f, ratio, slice(n // 4, 3 * n // 4)) / 0.1
    expected = gaussian_mtf(f, out.sigma_m[0]) * box_mtf(f, ratio)
    assert measured == pytest.approx(expected, rel=0.02)
    # the same at the LR Nyquist frequency itself would be the profile's MTF (0.25) by construction
    assert gaussian_mtf(1 / (2 * ratio), out.sigma_m[0]) * box_mtf(1 / (2 * ratio), ratio) == pytest.approx(0.25)


def test_per_band_mtf_values_give_per_band_blur():
    cfg = get_profile("s2", scale=4, snr=None, mtf={"B04": 0.15, "B08": 0.30, "default": 0.25})
    img = np.random.default_rng(0).uniform(0.05, 0.4, (3, 32, 32)).astype(np.float32)
    out = degrade_array(img, transform=Affine(1, 0, 0, 0, -1, 32), config=cfg, bands=["B04", "B08", "B02"])
    expect = [gaussian_sigma_for_mtf(m, 4.0) for m in (0.15, 0.30, 0.25)]
    np.testing.assert_allclose(out.sigma_m, expect)
    assert out.sigma_m[0] > out.sigma_m[2] > out.sigma_m[1]  # lower MTF = wider PSF


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape", [(100, 100), (101, 103)])
def test_non_integer_resampling_geometry_3m_to_10m(shape):
    t = Affine(3, 0, 440000, 0, -3, 4170000)
    img = np.random.default_rng(1).uniform(0.05, 0.3, (4, *shape)).astype(np.float32)
    for profile in ("s2", "bicubic"):
        out = degrade_array(img, transform=t, crs=UTM, config=get_profile(profile, gsd=10))
        assert out.data.shape == (4, 30, 30)
        assert out.transform == Affine(10, 0, 440000, 0, -10, 4170000)
    by_scale = target_grid(t, shape, scale=10 / 3)
    assert (by_scale.height, by_scale.width) == (30, 30) and by_scale.transform.almost_equals(Affine(10, 0, 440000, 0, -10, 4170000))


def test_area_average_weights_partial_pixels_exactly():
    """A column ramp (value = column index) averaged from 3 m onto 10 m: each LR pixel is the area-weighted mean."""
    img = np.tile(np.arange(30, dtype=np.float32), (30, 1))[None]
    cfg = DegradeConfig(gsd=10, scale=None, resampling="average")
    out = degrade_array(img, transform=Affine(3, 0, 0, 0, -3, 90), config=cfg).data[0, 0]
    expect = []
    for j in range(9):
        a, b = 10 * j / 3, (10 * j + 10) / 3  # LR pixel extent in HR pixel units
        expect.append(sum(max(0.0, min(b, i + 1) - max(a, i)) * i for i in range(math.floor(a), math.ceil(b))) / (b - a))
    np.testing.assert_allclose(out, expect, rtol=1e-5)


def test_target_grid_errors():
    t = Affine(10, 0, 0, 0, -10, 100)
    with pytest.raises(InputError, match="finer"):
        target_grid(t, (10, 10), gsd=3)
    with pytest.raises(InputError, match="north-up"):
        target_grid(Affine(10, 1, 0, 0, -10, 100), (10, 10), gsd=20)
    with pytest.raises(InputError, match="smaller than one"):
        target_grid(t, (2, 2), gsd=30)


# ---------------------------------------------------------------------------------------------- noise, quantisation
def test_noise_std_matches_snr_and_is_seeded():
    img = np.full((2, 256, 256), 0.2, np.float32)
    cfg = get_profile("s2", scale=4, mtf=None, snr={"B04": 50, "default": 100}, quantize=False, seed=3)
    a = degrade_array(img, transform=Affine(1, 0, 0, 0, -1, 256), config=cfg, bands=["B04", "B03"])
    b = degrade_array(img, transform=Affine(1, 0, 0, 0, -1, 256), config=cfg, bands=["B04", "B03"])
    np.testing.assert_array_equal(a.data, b.data)
    assert a.data[0].std() == pytest.approx(0.2 / 50, rel=0.05)
    assert a.data[1].std() == pytest.approx(0.2 / 100, rel=0.05)
    assert a.data.mean() == pytest.approx(0.2, abs=1e-3)


def test_quantize_dn_and_nodata():
    x = np.array([[[0.12341, 0.0, np.nan], [7.0, 0.5, 0.00004]]], np.float32)
    dn, nodata = quantize(x)
    assert nodata == 0 and dn.dtype == np.uint16
    np.testing.assert_array_equal(dn, [[[1234, 1, 0], [65535, 5000, 1]]])  # valid DN kept >= 1 so 0 stays nodata
    dn2, nodata2 = quantize(np.array([[[0.1, 0.0]]], np.float32), offset=1000)
    assert nodata2 is None and dn2.tolist() == [[[2000, 1000]]]


def test_s2_profile_quantises_and_bicubic_keeps_constant_images():
    img = np.full((4, 40, 40), 0.1234, np.float32)
    t = Affine(1, 0, 0, 0, -1, 40)
    s2 = degrade_array(img, transform=t, config=get_profile("s2", scale=4, snr=None))
    assert s2.data.dtype == np.uint16 and (s2.data == 1234).all()
    bic = degrade_array(img, transform=t, config=get_profile("bicubic", scale=4))
    assert bic.data.dtype == np.float32 and np.allclose(bic.data, 0.1234, atol=1e-6)


# ---------------------------------------------------------------------------------------------- band transforms
def test_fit_gain_offset_recovers_known_mapping():
    rng = np.random.default_rng(0)
    src = rng.uniform(0.02, 0.5, (4, 40, 40))
    gain, off = np.array([0.9, 1.1, 1.05, 0.8]), np.array([0.01, -0.005, 0.0, 0.02])
    dst = gain[:, None, None] * src + off[:, None, None] + rng.normal(0, 1e-4, src.shape)
    t = fit_band_transform(src, dst, kind="gain_offset")
    np.testing.assert_allclose(np.diag(t.matrix), gain, atol=2e-3)
    np.testing.assert_allclose(t.offset, off, atol=1e-3)
    assert np.count_nonzero(t.matrix - np.diag(np.diag(t.matrix))) == 0
    assert min(t.r2) > 0.999


def test_fit_full_linear_recovers_known_matrix_and_roundtrips_json(tmp_path):
    rng = np.random.default_rng(1)
    src = rng.uniform(0.02, 0.5, (4, 30, 30))
    m = np.eye(4) * 0.9 + rng.uniform(-0.05, 0.05, (4, 4))
    o = rng.uniform(-0.01, 0.01, 4)
    dst = np.einsum("oc,chw->ohw", m, src) + o[:, None, None]
    valid = np.ones((30, 30), bool)
    valid[:5] = False
    dst[:, :5] = 99.0  # garbage where masked out: must not influence the fit
    t = fit_band_transform(src, dst, kind="linear", valid=valid, bands=["B04", "B03", "B02", "B08"])
    np.testing.assert_allclose(t.matrix, m, atol=1e-8)
    np.testing.assert_allclose(t.offset, o, atol=1e-8)
    np.testing.assert_allclose(t.apply(src.astype(np.float32))[:, 5:], dst[:, 5:], atol=1e-5)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t.to_dict()))
    back = BandTransform.load(path)
    np.testing.assert_allclose(back.matrix, t.matrix)
    assert back.bands == ("B04", "B03", "B02", "B08")


def test_fit_band_transform_errors():
    a = np.ones((4, 10, 10))
    with pytest.raises(InputError, match="co-registered"):
        fit_band_transform(a, np.ones((4, 10, 11)))
    with pytest.raises(InputError, match="valid"):
        fit_band_transform(a, a, valid=np.zeros((10, 10), bool))
    with pytest.raises(InputError, match="kind"):
        fit_band_transform(a, a, kind="quadratic")


def test_band_transform_is_applied_first_in_degradation():
    img = np.full((2, 16, 16), 0.1, np.float32)
    t = BandTransform(np.diag([2.0, 1.0]), np.array([0.0, 0.05]))
    out = degrade_array(img, transform=Affine(1, 0, 0, 0, -1, 16), config=DegradeConfig(scale=4, band_transform=t))
    np.testing.assert_allclose(out.data[:, 0, 0], [0.2, 0.15], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- histogram matching
def test_histogram_match_takes_reference_distribution_and_keeps_order():
    from skimage.exposure import match_histograms

    rng = np.random.default_rng(2)
    sr = rng.gamma(2.0, 0.05, (3, 64, 64)).astype(np.float32)
    lr = (rng.normal(0.2, 0.03, (3, 16, 16))).astype(np.float32)
    out = histogram_match(sr, lr)
    for b in range(3):
        q = np.linspace(0.05, 0.95, 19)
        np.testing.assert_allclose(np.quantile(out[b], q), np.quantile(lr[b], q), atol=0.006)
        order = np.argsort(sr[b].ravel())
        assert np.all(np.diff(out[b].ravel()[order]) >= -1e-7)  # monotone mapping
    same = rng.normal(0.2, 0.05, (2, 32, 32)).astype(np.float32)
    ref = rng.uniform(0.0, 0.4, (2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(histogram_match(same, ref), match_histograms(same, ref, channel_axis=0), atol=0.01)


def test_histogram_match_errors():
    with pytest.raises(InputError):
        histogram_match(np.ones((3, 8, 8)), np.ones((4, 8, 8)))
    with pytest.raises(InputError, match="no valid"):
        histogram_match(np.ones((1, 8, 8)), np.full((1, 8, 8), np.nan))


# ---------------------------------------------------------------------------------------------- files and CLI
def _write_hr(path: Path, data: np.ndarray, transform: Affine, descriptions=("B04", "B03", "B02", "B08")) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                       crs=UTM, transform=transform) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)


def test_cli_degrades_folder_with_geometry_scales_and_resume(tmp_path, capsys):
    hr = tmp_path / "hr"
    (hr / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_hr(hr / "a.tif", (rng.uniform(0.05, 0.3, (4, 50, 50)) * 10000).astype(np.uint16), Affine(3, 0, 440000, 0, -3, 4170000))
    _write_hr(hr / "sub" / "b.tif", (rng.uniform(0.05, 0.3, (4, 40, 40)) * 10000).astype(np.uint16), Affine(3, 0, 441000, 0, -3, 4170000))
    out = tmp_path / "lr"
    argv = ["degrade", "--hr", str(hr), "--out", str(out), "--profile", "s2", "--gsd", "10", "--hr-scale", "10000", "--seed", "1"]
    assert cli.main(argv) == 0
    assert "2 written" in capsys.readouterr().out
    with rasterio.open(out / "a.tif") as ds:
        assert (ds.width, ds.height) == (15, 15) and ds.dtypes[0] == "uint16"
        assert ds.transform == Affine(10, 0, 440000, 0, -10, 4170000) and ds.crs == UTM
        assert ds.scales == (1e-4,) * 4 and ds.descriptions == ("B04", "B03", "B02", "B08")
        assert ds.tags()["PROFILE"] == "s2" and json.loads(ds.tags()["GAPEVAL_DEGRADE"])["gsd"] == 10
        refl = ds.read().astype(float) * 1e-4
    assert 0.1 < refl.mean() < 0.25
    with rasterio.open(out / "sub" / "b.tif") as ds:
        assert (ds.width, ds.height) == (12, 12)
    assert cli.main(argv) == 0
    assert "0 written, 2 already done" in capsys.readouterr().out
    argv[argv.index("--seed") + 1] = "2"  # another configuration: redone
    assert cli.main(argv) == 0
    assert "2 written" in capsys.readouterr().out
    # the uint16 outputs carry their scale: degrading them again needs no --hr-scale
    assert cli.main(["degrade", "--hr", str(out), "--out", str(tmp_path / "lr2"), "--profile", "bicubic", "--gsd", "20"]) == 0
    with rasterio.open(tmp_path / "lr2" / "a.tif") as ds:
        assert ds.dtypes[0] == "float32" and 0.1 < ds.read().mean() < 0.25 and (ds.width, ds.height) == (7, 7)


def test_cli_errors_are_exit_code_1_with_a_clear_message(tmp_path, capsys):
    hr = tmp_path / "hr"
    hr.mkdir()
    _write_hr(hr / "a.tif", np.full((4, 20, 20), 1500, np.uint16), Affine(10, 0, 0, 0, -10, 200))
    base = ["degrade", "--hr", str(hr), "--out", str(tmp_path / "lr"), "--profile", "s2"]
    assert cli.main(base) == 1
    assert "--hr-scale" in capsys.readouterr().err  # DN given as reflectance
    assert cli.main(base + ["--hr-scale", "10000", "--gsd", "5"]) == 1
    assert "finer" in capsys.readouterr().err
    assert cli.main(["degrade", "--hr", str(tmp_path / "missing"), "--out", str(tmp_path / "lr"), "--profile", "s2"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a bad option value is a usage error, found while parsing (exit 2)
        cli.main(base + ["--hr-scale", "10000", "--mtf", "B04=abc"])
    assert exc.value.code == 2 and "Cannot parse" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(base + ["--scale", "4", "--gsd", "10"])
    assert exc.value.code == 2


def test_profile_overrides_and_unknown_names():
    cfg = get_profile("s2", snr=None, gsd=10)
    assert cfg.snr is None and cfg.gsd == 10 and cfg.quantize
    with pytest.raises(InputError, match="Unknown degradation profile"):
        get_profile("sentinel3")
    with pytest.raises(InputError, match="Unknown degradation parameter"):
        get_profile("s2", blur_sigma=1)
    with pytest.raises(InputError):
        degrade_array(np.ones((1, 8, 8), np.float32), config=get_profile("s2", gsd=10))  # no georeferencing for a GSD


@pytest.mark.skipif(not S2_STACK.is_file(), reason="shared Sentinel-2 stack not available")
def test_real_s2_crop_s2_profile_is_blurrier_than_bicubic():
    from rasterio.windows import Window

    with rasterio.open(S2_STACK) as ds:
        idx = [ds.descriptions.index(b) + 1 for b in ("B04", "B03", "B02", "B08")]
        data = ds.read(idx, window=Window(800, 800, 96, 96)).astype(np.float32) / 10000
        t = ds.window_transform(Window(800, 800, 96, 96))
    bands = ["B04", "B03", "B02", "B08"]
    s2 = degrade_array(data, transform=t, crs=UTM, bands=bands, config=get_profile("s2", gsd=40, snr=None, quantize=False))
    bic = degrade_array(data, transform=t, crs=UTM, bands=bands, config=get_profile("bicubic", gsd=40))
    assert s2.data.shape == bic.data.shape == (4, 24, 24)
    grad = lambda x: np.abs(np.diff(x, axis=-1)).mean()  # noqa: E731
    assert grad(s2.data) < 0.9 * grad(bic.data)  # the MTF blur removes contrast the bicubic kernel keeps
    np.testing.assert_allclose(s2.data.mean(axis=(1, 2)), data.mean(axis=(1, 2)), rtol=0.02)  # radiometry preserved
