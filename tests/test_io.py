"""Reading inputs: lpips_sat.raster (files, scale), gapeval.folders (pairing), gapeval.grids (half-pixel check),
lpips_sat.bands (band order), gapeval.reflectance, gapeval.windows and gapeval.sources (windowed/resampled reads), atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from PIL import Image
from rasterio.windows import Window

from gapeval.folders import list_images, pair_folders
from gapeval.grids import Grid, check_same_grid, grid_of, lr_ratio
from gapeval.reflectance import check_not_tiny, check_reflectance
from gapeval.sources import RasterSource, RasterWriter
from gapeval.windows import expand_window, fixed_size_window, iter_windows, window_slices
from lpips_sat.bands import DEFAULT_BANDS, S2_L1C_13, select_bands
from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.raster import band_gain_offset, raster_info, read_raster, write_raster

CRS = "EPSG:32618"
T10 = Affine(10, 0, 435730, 0, -10, 4179460)


def tif(path, data, transform=T10, crs=CRS, **kw):
    return write_raster(path, np.asarray(data), transform=transform, crs=crs, dtype=str(np.asarray(data).dtype), **kw)


def source(path, target_grid=None, bands=None, scale=None, declared=None):
    info = raster_info(path)
    idx = select_bands(info, declared, bands or DEFAULT_BANDS, "--pred-bands")
    gain, offset = band_gain_offset(info, idx, scale)
    return RasterSource(info, grid_of(info, target_grid), idx, gain, offset)


# ------------------------------------------------------------------------------------------------- pairing


def test_pairing_by_relative_path_and_stem(tmp_path):
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "p" / "sub").mkdir(parents=True)
    for rel in ("a.tif", "sub/b.tif"):
        tif(tmp_path / "t" / rel, np.zeros((1, 4, 4), np.float32))
    np.save(tmp_path / "p" / "a.npy", np.zeros((1, 4, 4), np.float32))  # other suffix, same stem
    tif(tmp_path / "p" / "sub" / "b.tif", np.zeros((1, 4, 4), np.float32))
    (tmp_path / "p" / ".a.tif.tmp").write_text("partial write")  # hidden temporaries are ignored
    pairing = pair_folders(tmp_path / "t", {"m": tmp_path / "p"})
    assert pairing.keys == ["a", "sub/b"]
    assert pairing.preds["m"]["a"].suffix == ".npy"
    assert pairing.n_pairs == 2 and not pairing.unpaired


def test_unpaired_files_are_an_error_unless_allowed(tmp_path):
    for folder, names in (("t", ["a", "b", "c"]), ("p", ["a", "b", "x"]), ("l", ["a"])):
        (tmp_path / folder).mkdir()
        for n in names:
            tif(tmp_path / folder / f"{n}.tif", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InputError) as err:
        pair_folders(tmp_path / "t", {"m": tmp_path / "p"}, tmp_path / "l")
    text = str(err.value)
    assert "--allow-missing" in text and "c" in text and "x" in text and "without LR" in text
    pairing = pair_folders(tmp_path / "t", {"m": tmp_path / "p"}, tmp_path / "l", allow_missing=True)
    assert pairing.keys == ["a", "b"]
    assert pairing.unpaired["targets without prediction in m"] == ["c"]
    assert pairing.unpaired["predictions in m without target"] == ["x"]
    assert pairing.unpaired["targets without LR input"] == ["b", "c"]


def test_empty_missing_and_ambiguous_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "t").mkdir()
    tif(tmp_path / "t" / "a.tif", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InputError, match="no images"):
        pair_folders(tmp_path / "empty", {"m": tmp_path / "t"})
    with pytest.raises(InputError, match="no images.*prediction folder 'm'"):
        pair_folders(tmp_path / "t", {"m": tmp_path / "empty"})
    with pytest.raises(MissingFileError, match="nowhere"):
        pair_folders(tmp_path / "t", {"m": tmp_path / "nowhere"})
    np.save(tmp_path / "t" / "a.npy", np.zeros((1, 4, 4)))
    with pytest.raises(InputError, match="same name stem"):
        list_images(tmp_path / "t")
    assert list(list_images(tmp_path / "t", "*.npy")) == ["a"]


# --------------------------------------------------------------------------------------------------- grids


def test_grid_half_pixel_rule():
    g = Grid(T10, CRS, 40, 50)
    assert g.mismatch(Grid(T10 @ Affine.translation(0.4, -0.3), CRS, 40, 50)) is None
    assert "offset by up to 0.60 px" in g.mismatch(Grid(T10 @ Affine.translation(0.6, 0), CRS, 40, 50))
    assert "CRS differ" in g.mismatch(Grid(T10, "EPSG:32633", 40, 50))
    assert "shapes differ" in g.mismatch(Grid(T10, CRS, 41, 50))
    # a 1 % pixel-size error accumulates to 0.5 px over 50 columns
    assert g.mismatch(Grid(Affine(10.08, 0, T10.c, 0, -10, T10.f), CRS, 40, 50)) is None
    assert "offset" in g.mismatch(Grid(Affine(10.12, 0, T10.c, 0, -10, T10.f), CRS, 40, 50))


def test_check_same_grid_needs_explicit_resample(tmp_path):
    target = Grid(T10, CRS, 40, 40)
    coarse = Grid(T10 @ Affine.scale(2), CRS, 20, 20)
    with pytest.raises(InputError) as err:
        check_same_grid(coarse, target, tmp_path / "sr.tif", tmp_path / "hr.tif", None)
    assert "sr.tif" in str(err.value) and "hr.tif" in str(err.value) and "--resample" in str(err.value)
    assert "pixel 20x20" in str(err.value) and "pixel 10x10" in str(err.value)
    assert check_same_grid(coarse, target, tmp_path / "sr.tif", tmp_path / "hr.tif", "bilinear") is True
    assert check_same_grid(target, target, tmp_path / "sr.tif", tmp_path / "hr.tif", None) is False


def test_files_without_geometry_take_the_target_extent():
    target = Grid(T10, CRS, 40, 40)
    from lpips_sat.raster import RasterInfo

    same = grid_of(RasterInfo(path=None, count=4, height=40, width=40, dtype="uint8"), target)  # type: ignore[arg-type]
    assert same.mismatch(target) is None and not same.georeferenced
    lr = grid_of(RasterInfo(path=None, count=4, height=10, width=10, dtype="uint8"), target)  # type: ignore[arg-type]
    assert lr.res == (40.0, 40.0) and lr.bounds == target.bounds


def test_lr_ratio_and_extent(tmp_path):
    target = Grid(T10, CRS, 40, 40)
    assert lr_ratio(Grid(T10 @ Affine.scale(4), CRS, 10, 10), target, tmp_path / "lr", tmp_path / "hr") == 4.0
    assert lr_ratio(Grid(T10 @ Affine.scale(40 / 12), CRS, 12, 12), target, tmp_path / "lr", tmp_path / "hr") == pytest.approx(40 / 12)
    with pytest.raises(InputError, match="same extent"):
        lr_ratio(Grid(T10 @ Affine.scale(4), CRS, 11, 10), target, tmp_path / "lr", tmp_path / "hr")
    with pytest.raises(InputError, match="coarser"):
        lr_ratio(target, target, tmp_path / "lr", tmp_path / "hr")
    with pytest.raises(InputError, match="CRS differ"):
        lr_ratio(Grid(T10 @ Affine.scale(4), "EPSG:32633", 10, 10), target, tmp_path / "lr", tmp_path / "hr")


# --------------------------------------------------------------------------------------------- bands, scale


def test_band_selection(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 3000, (13, 8, 8)).astype(np.uint16)
    tif(tmp_path / "s2.tif", data, descriptions=S2_L1C_13)
    idx = select_bands(raster_info(tmp_path / "s2.tif"), None, DEFAULT_BANDS, "--target-bands")
    assert idx == [3, 2, 1, 7]  # B04, B03, B02, B08 in the 13-band L1C order
    tif(tmp_path / "ps.tif", data[:4])
    info = raster_info(tmp_path / "ps.tif")
    assert select_bands(info, "planetscope-4b", DEFAULT_BANDS, "--pred-bands") == [2, 1, 0, 3]  # B,G,R,NIR -> R,G,B,NIR
    assert select_bands(info, None, DEFAULT_BANDS, "--pred-bands") == [0, 1, 2, 3]  # 4 unnamed bands: the metric's order
    with pytest.raises(InputError, match="declares 3 bands.*has 4"):
        select_bands(info, "rgb", DEFAULT_BANDS, "--pred-bands")
    tif(tmp_path / "rgb.tif", data[:3])
    with pytest.raises(InputError, match="rgb.tif: has 3 bands.*--pred-bands"):
        select_bands(raster_info(tmp_path / "rgb.tif"), None, DEFAULT_BANDS, "--pred-bands")
    with pytest.raises(InputError, match="rgb.tif.*B08"):
        select_bands(raster_info(tmp_path / "rgb.tif"), "rgb", DEFAULT_BANDS, "--pred-bands")


def test_scale_from_metadata_or_flag(tmp_path):
    dn = np.full((4, 8, 8), 1234, np.uint16)
    tif(tmp_path / "scaled.tif", dn, scales=[1e-4] * 4)
    tif(tmp_path / "plain.tif", dn)
    data, valid = source(tmp_path / "scaled.tif").read()
    assert valid.all() and np.allclose(data, 0.1234)
    data, _ = source(tmp_path / "plain.tif", scale=10000).read()
    assert np.allclose(data, 0.1234)
    data, _ = source(tmp_path / "plain.tif").read()
    with pytest.raises(InputError, match="plain.tif.*digital numbers.*--pred-scale 10000"):
        check_reflectance(data, np.ones((8, 8), bool), tmp_path / "plain.tif", "--pred-scale")
    with pytest.raises(InputError, match="down to -0.7"):
        check_reflectance(np.full((1, 2, 2), -0.7), np.ones((2, 2), bool), tmp_path / "x.tif", "--pred-scale")
    with pytest.raises(InputError, match="implausibly small"):
        check_not_tiny(0.3 / 10000, tmp_path / "x.tif", "--pred-scale")
    check_not_tiny(0.3, tmp_path / "x.tif", "--pred-scale")
    assert (
        check_reflectance(np.full((1, 2, 2), 5.0), np.zeros((2, 2), bool), tmp_path / "x.tif", "--s") == -np.inf
    )  # masked values are not judged


# ---------------------------------------------------------------------------------------------------- reads


def test_nodata_nan_and_inf_are_invalid(tmp_path):
    data = np.full((4, 6, 6), 0.2, np.float32)
    data[:, 0, 0] = -9999
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    data[0, 3, 3] = -9999  # one band equal to nodata is a value, not nodata
    tif(tmp_path / "x.tif", data, nodata=-9999)
    arr, valid = source(tmp_path / "x.tif").read()
    expected = np.ones((6, 6), bool)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = False
    assert np.array_equal(valid, expected)
    assert np.isnan(arr[:, ~valid]).all() and np.isfinite(arr[:, valid]).all()


def test_windowed_reads_match_full_read_for_tif_npy_png(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.random((4, 20, 30)).astype(np.float32)
    tif(tmp_path / "a.tif", data)
    np.save(tmp_path / "a.npy", data)
    rgb = (rng.random((20, 30, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgb, "RGBA").save(tmp_path / "a.png")
    win = Window(7, 3, 11, 9)
    for name in ("a.tif", "a.npy", "a.png"):
        src = source(tmp_path / name, scale=255 if name.endswith("png") else None)
        with src:
            full, _ = src.read()
            part, _ = src.read(win)
        assert np.array_equal(part, full[:, 3:12, 7:18]), name
    assert np.allclose(source(tmp_path / "a.png", scale=255).read()[0], np.moveaxis(rgb, -1, 0) / 255)


def test_corrupt_tiff_names_the_file(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 50)
    with pytest.raises(InputError, match="broken.tif.*corrupt"):
        raster_info(bad)
    with pytest.raises(MissingFileError):
        raster_info(tmp_path / "absent.tif")
    full = tmp_path / "ok.tif"
    tif(full, np.ones((4, 300, 300), np.float32))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(InputError, match="truncated.tif"):
        src = source(truncated)
        with src:
            src.read()


def test_resample_onto_coarser_grid_is_the_block_mean(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.random((4, 16, 16)).astype(np.float32)
    data[:, 0, 0] = np.nan
    tif(tmp_path / "hr.tif", data)
    hr = source(tmp_path / "hr.tif")
    lr_grid = Grid(T10 @ Affine.scale(4), CRS, 4, 4)
    out, valid = hr.read_on(lr_grid, Window(0, 0, 4, 4), "average")
    expected = data.reshape(4, 4, 4, 4, 4).mean(axis=(2, 4))
    assert not valid[0, 0] and valid.sum() == 15  # the block holding the NaN is invalid
    assert np.allclose(out[:, valid], expected[:, valid], atol=1e-6)
    part, _ = hr.read_on(lr_grid, Window(1, 2, 2, 2), "average")  # a window of the coarse grid
    assert np.allclose(part, expected[:, 2:4, 1:3], atol=1e-6)


def test_resample_a_shifted_grid(tmp_path):
    data = np.arange(4 * 12 * 12, dtype=np.float32).reshape(4, 12, 12) / 1000
    tif(tmp_path / "a.tif", data)
    src = source(tmp_path / "a.tif")
    shifted = Grid(T10 @ Affine.translation(2, 1), CRS, 12, 12)  # 2 columns right, 1 row down
    out, valid = src.read_on(shifted, Window(0, 0, 12, 12), "nearest")
    assert valid[:11, :10].all() and not valid[11:, :].any() and not valid[:, 10:].any()
    assert np.array_equal(out[:, :11, :10], data[:, 1:, 2:])


def test_windows_cover_the_image_once():
    cover = np.zeros((70, 45), int)
    for w in iter_windows(70, 45, 32):
        cover[int(w.row_off) : int(w.row_off + w.height), int(w.col_off) : int(w.col_off + w.width)] += 1
    assert (cover == 1).all()
    last = list(iter_windows(70, 45, 32))[-1]
    fixed = fixed_size_window(last, 32, 70, 45)
    assert (fixed.row_off, fixed.col_off, fixed.height, fixed.width) == (38, 13, 32, 32)
    halo = expand_window(last, 5, 70, 45)
    assert (halo.row_off, halo.col_off, halo.height, halo.width) == (59, 27, 11, 18)
    rs, cs = window_slices(last, halo)
    assert (rs.start, rs.stop, cs.start, cs.stop) == (5, 11, 5, 18)


# --------------------------------------------------------------------------------------------------- writes


def test_raster_writer_is_atomic_and_georeferenced(tmp_path):
    grid = Grid(T10, CRS, 8, 8)
    path = tmp_path / "map.tif"
    with pytest.raises(RuntimeError), RasterWriter(path, grid) as w:
        w.write(np.ones((1, 4, 8), np.float32), Window(0, 0, 8, 4))
        raise RuntimeError("interrupted")
    assert not path.exists() and not list(tmp_path.iterdir())
    with RasterWriter(path, grid, tags={"A": 1}) as w:
        w.write(np.ones((1, 4, 8), np.float32), Window(0, 0, 8, 4))
        w.write(np.full((1, 4, 8), 2, np.float32), Window(0, 4, 8, 4))
    r = read_raster(path)
    assert r.transform == T10 and r.crs.to_epsg() == 32618 and r.tags["A"] == "1"
    assert r.data[0, :4].sum() == 32 and r.data[0, 4:].sum() == 64
