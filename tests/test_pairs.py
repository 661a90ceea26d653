"""gapeval pairs: a constructed cross-sensor case with a known shift and gain, spatial splits, resume, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import fourier_shift

from gapeval.cli import main

S2_STACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"
SHIFT = (1.3, -0.6)  # HR px: where the LR content lies in the HR scene
GAINS = np.array([0.9, 1.1, 1.0, 0.95])
OFFSETS = np.array([0.01, -0.005, 0.0, 0.02])
SIZE, SCALE = 512, 4


def _read_s2(row: int, col: int, size: int) -> tuple[np.ndarray, object, object]:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    if not S2_STACK.is_file():
        pytest.skip("shared Sentinel-2 stack not available")
    with rasterio.open(S2_STACK) as ds:
        win = Window(col, row, size, size)
        return ds.read([4, 3, 2, 8], window=win).astype(np.float64) / 10000.0, ds.window_transform(win), ds.crs


def _reprojected(data: np.ndarray, transform, crs, dst_crs: str) -> tuple[np.ndarray, object, str]:
    """The same LR scene in another CRS (a real reprojection, so the footprints overlap)."""
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    h, w = data.shape[1:]
    dst_t, dw, dh = calculate_default_transform(crs, dst_crs, w, h, *_bounds(transform, w, h), resolution=abs(transform.a))
    out = np.full((data.shape[0], dh, dw), np.nan, np.float32)
    reproject(data.astype(np.float32), out, src_transform=transform, src_crs=crs, dst_transform=dst_t, dst_crs=dst_crs, dst_nodata=np.nan,
              resampling=Resampling.bilinear)
    return out, dst_t, dst_crs


def _bounds(transform, w: int, h: int) -> tuple[float, float, float, float]:
    x0, y0 = transform.c, transform.f
    x1, y1 = x0 + w * transform.a, y0 + h * transform.e
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _write(path: Path, data: np.ndarray, transform, crs) -> Path:
    from lpips_sat.raster import write_raster

    write_raster(path, data.astype(np.float32), transform=transform, crs=crs, descriptions=("B04", "B03", "B02", "B08"))
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, object]:
    """HR: a real S2 crop (10 m). LR (40 m): the HR content moved so that it lies at +SHIFT in the HR, area-averaged
    4 x 4, then per-band gain and offset; the shift is made by an exact Fourier shift of a larger crop (independent of
    the spline code under test) and the LR grid shares the HR's corner."""
    from affine import Affine

    root = tmp_path_factory.mktemp("pairs_scenes")
    pad = 32
    big, transform, crs = _read_s2(600, 700, SIZE + 2 * pad)
    hr = big[:, pad:pad + SIZE, pad:pad + SIZE]
    hr_t = transform @ Affine.translation(pad, pad)
    moved = np.stack([np.fft.ifft2(fourier_shift(np.fft.fft2(b), (-SHIFT[0], -SHIFT[1]))).real for b in big])[:, pad:pad + SIZE, pad:pad + SIZE]
    lr = moved.reshape(4, SIZE // SCALE, SCALE, SIZE // SCALE, SCALE).mean(axis=(2, 4)) * GAINS[:, None, None] + OFFSETS[:, None, None]
    lr_t = hr_t @ Affine.scale(SCALE)
    paths = {"hr": _write(root / "hr" / "s2_20160112.tif", hr, hr_t, crs), "lr": _write(root / "lr" / "ps_20160115.tif", lr, lr_t, crs)}
    # a second LR scene of the same place on a grid offset by 8 LR px (its tiles straddle the first one's)
    off = 8
    paths["lr2"] = _write(root / "lr2" / "ps_20160120.tif", lr[:, off:, off:], lr_t @ Affine.translation(off, off), crs)
    # content change: one 32 x 32 LR tile replaced by another place
    changed = lr.copy()
    other, _, _ = _read_s2(1400, 200, SIZE)
    changed[:, 32:64, 64:96] = other.reshape(4, SIZE // SCALE, SCALE, SIZE // SCALE, SCALE).mean(axis=(2, 4))[:, 32:64, 64:96]
    paths["changed"] = _write(root / "changed" / "ps_20160301.tif", changed, lr_t, crs)
    # bad inputs
    paths["far"] = _write(root / "far" / "far.tif", lr, Affine.translation(1e5, 0) @ lr_t, crs)
    paths["crs"] = _write(root / "crs" / "other.tif", *_reprojected(lr, lr_t, crs, "EPSG:32617"))
    paths["odd"] = _write(root / "odd" / "odd.tif", lr, hr_t @ Affine.scale(2.5), crs)
    return {"root": root, **paths, "hr_array": hr, "lr_array": lr}


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv") as f:
        return list(csv.DictReader(f))


def test_known_shift_and_gain_are_recovered_in_the_manifest(scenes, tmp_path):
    out = tmp_path / "pairs"
    rc = main(["pairs", "--hr", str(scenes["hr"].parent), "--lr", str(scenes["lr"].parent), "--out", str(out), "--scale", "4", "--tile", "128",
               "--block", "256", "--synthetic", "bicubic", "--harmonize", "linear"])
    assert rc == 0
    rows = [r for r in _manifest(out) if r["status"] == "kept"]
    assert len(rows) >= 12
    for r in rows:
        assert float(r["shift_dy"]) == pytest.approx(SHIFT[0], abs=0.1) and float(r["shift_dx"]) == pytest.approx(SHIFT[1], abs=0.1)
        assert float(r["residual_px"]) < 0.1
        gains = np.array([float(r[f"fit_gain_{b}"]) for b in ("B04", "B03", "B02", "B08")])
        np.testing.assert_allclose(gains, GAINS, rtol=0.01)
        assert r["lr_date"] == "2016-01-15" and r["hr_date"] == "2016-01-12" and r["corrected"] == "true"
    # the written HR tile, area-averaged, reproduces the LR tile after harmonisation (HR mapped onto the LR radiometry)
    import rasterio

    r = rows[0]
    with rasterio.open(out / r["split"] / "hr" / f"{r['tile']}.tif") as ds:
        hr_tile = ds.read()
    with rasterio.open(out / r["split"] / "lr" / f"{r['tile']}.tif") as ds:
        lr_tile, lr_transform = ds.read(), ds.transform
    with rasterio.open(out / r["split"] / "lr_synth_bicubic" / f"{r['tile']}.tif") as ds:
        assert ds.shape == lr_tile.shape[1:] and ds.transform.almost_equals(lr_transform)
    on_lr = hr_tile.reshape(4, 32, 4, 32, 4).mean(axis=(2, 4))
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert np.abs(on_lr[inner] - lr_tile[inner]).max() < 0.01
    state = json.loads((out / "pairs.json").read_text())
    assert state["status"] == "complete" and sum(state["tiles"].values()) == len(rows)


def test_blocks_never_leak_between_splits_and_resume_recomputes_nothing(scenes, tmp_path):
    out = tmp_path / "pairs"
    lr_both = tmp_path / "lr_both"
    lr_both.mkdir()
    for key in ("lr", "lr2"):
        (lr_both / scenes[key].name).symlink_to(scenes[key])
    args = ["pairs", "--hr", str(scenes["hr"]), "--lr", str(lr_both), "--out", str(out), "--tile", "64", "--block", "128", "--synthetic", "none",
            "--split", "0.5,0.25,0.25", "--seed", "3"]
    assert main(args) == 0
    rows = _manifest(out)
    kept = [r for r in rows if r["status"] == "kept"]
    assert {r["lr_scene"] for r in kept} == {"ps_20160115.tif", "ps_20160120.tif"}
    assert {r["split"] for r in kept} == {"train", "val", "test"}
    assert any(r["reason"] == "crosses a spatial block edge" for r in rows)  # the offset scene's straddling tiles
    boxes = [(r["split"], *(float(r[k]) for k in ("left", "bottom", "right", "top"))) for r in kept]
    for i, (sa, *a) in enumerate(boxes):
        for sb, *b in boxes[i + 1:]:
            overlap = min(a[2], b[2]) - max(a[0], b[0]) > 1e-6 and min(a[3], b[3]) - max(a[1], b[1]) > 1e-6
            assert not (overlap and sa != sb), "tiles of different splits overlap"
    for r in kept:  # files are where the manifest says
        assert (out / r["split"] / "hr" / f"{r['tile']}.tif").is_file() and (out / r["split"] / "lr" / f"{r['tile']}.tif").is_file()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    text = (out / "manifest.csv").read_text()
    assert main(args) == 0
    assert (out / "manifest.csv").read_text() == text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == before
    # an interruption after the files of the last kept tile but before its manifest row (plus a partial row)
    lines = text.splitlines(keepends=True)
    last_kept = max(i for i, line in enumerate(lines) if ",kept," in line)
    (out / "manifest.csv").write_text("".join(lines[:last_kept]) + lines[last_kept][:20])
    assert main(args) == 0
    assert (out / "manifest.csv").read_text() == text
    redone = {p for p, t in before.items() if p.stat().st_mtime_ns != t}
    name = lines[last_kept].split(",")[0]
    assert redone and all(name in p.name for p in redone)


def test_cloud_mask_band_invalidates_its_pixels(scenes, tmp_path):
    import rasterio

    from lpips_sat.raster import write_raster

    with rasterio.open(scenes["hr"]) as ds:
        data, transform, crs = ds.read(), ds.transform, ds.crs
    mask = np.zeros((1, *data.shape[1:]), np.float32)
    mask[0, :128, :128] = 1  # a cloud over the first tile
    path = write_raster(tmp_path / "hr_masked" / "s2_20160112.tif", np.concatenate([data, mask]), transform=transform, crs=crs)
    out = tmp_path / "pairs"
    assert main(["pairs", "--hr", str(path), "--lr", str(scenes["lr"]), "--out", str(out), "--tile", "128", "--block", "256",
                 "--synthetic", "none", "--hr-mask-band", "5"]) == 0
    rows = {(int(r["row"]), int(r["col"])): r for r in _manifest(out)}
    assert rows[(0, 0)]["status"] == "rejected" and "valid fraction" in rows[(0, 0)]["reason"]
    assert rows[(0, 32)]["status"] == "kept" and rows[(32, 0)]["status"] == "kept"


def test_content_change_filter_rejects_the_changed_tile(scenes, tmp_path):
    out = tmp_path / "pairs"
    assert main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes["changed"]), "--out", str(out), "--tile", "128", "--block", "256",
                 "--synthetic", "none", "--min-corr", "0.8", "--no-correct"]) == 0
    rows = {(int(r["row"]), int(r["col"])): r for r in _manifest(out)}
    bad = rows[(32, 64)]
    # rejected: either the correlation is low, or the changed content sends the shift estimate astray first
    assert bad["status"] == "rejected" and ("content change" in bad["reason"] or "shift" in bad["reason"]) and float(bad["correlation"]) < 0.8
    kept = [r for r in rows.values() if r["status"] == "kept"]
    assert len(kept) == len(rows) - 1 and all(float(r["correlation"]) > 0.9 and r["corrected"] == "false" for r in kept)


@pytest.mark.parametrize("harmonize", [["--harmonize", "linear", "--harmonize-on", "scene"], ["--harmonize", "histogram"]])
def test_harmonised_hr_takes_the_lr_radiometry(scenes, tmp_path, harmonize):
    import rasterio

    out = tmp_path / "pairs"
    assert main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes["lr"]), "--out", str(out), "--tile", "128", "--block", "256",
                 "--synthetic", "none", *harmonize]) == 0
    for r in [r for r in _manifest(out) if r["status"] == "kept"][:4]:
        with rasterio.open(out / r["split"] / "hr" / f"{r['tile']}.tif") as ds:
            hr_means = np.nanmean(ds.read().reshape(4, -1), axis=1)
        with rasterio.open(out / r["split"] / "lr" / f"{r['tile']}.tif") as ds:
            lr_means = ds.read().reshape(4, -1).mean(axis=1)
        np.testing.assert_allclose(hr_means, lr_means, atol=0.003)  # unharmonised, they differ by the gains: up to 0.02
        if "linear" in harmonize:
            gains = np.array([float(r[f"harm_gain_{b}"]) for b in ("B04", "B03", "B02", "B08")])
            np.testing.assert_allclose(gains, GAINS, rtol=0.01)


def test_shift_affine_records_a_near_zero_deformation_for_a_pure_shift(scenes, tmp_path):
    out = tmp_path / "pairs"
    assert main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes["lr"]), "--out", str(out), "--tile", "128", "--block", "256",
                 "--synthetic", "none", "--align", "shift+affine"]) == 0
    kept = [r for r in _manifest(out) if r["status"] == "kept"]
    assert len(kept) >= 12
    for r in kept:
        deform = np.array([float(v) for v in r["affine"].split()])
        assert deform.shape == (4,) and np.abs(deform).max() < 2e-3  # < 0.13 px at the tile corners
        assert float(r["shift_dy"]) == pytest.approx(SHIFT[0], abs=0.1) and float(r["shift_dx"]) == pytest.approx(SHIFT[1], abs=0.1)


def test_reproject_brings_an_hr_scene_in_another_crs_onto_the_lr_grid(scenes, tmp_path):
    out = tmp_path / "pairs"
    assert main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes["crs"]), "--out", str(out), "--tile", "128", "--block", "256",
                 "--synthetic", "none", "--reproject", "--min-valid", "0.9"]) == 0
    kept = [r for r in _manifest(out) if r["status"] == "kept"]
    assert len(kept) >= 4
    # the LR was itself resampled (bilinear) into the other UTM zone, so its content sits where it was: the HR, reprojected
    # onto that grid, shows the constructed misregistration, turned by the ~3 degree grid convergence between the zones
    shifts = np.array([[float(r["shift_dy"]), float(r["shift_dx"])] for r in kept])
    assert np.abs(np.median(shifts, axis=0) - SHIFT).max() < 0.3 and np.median(np.hypot(*shifts.T)) == pytest.approx(np.hypot(*SHIFT), abs=0.1)


@pytest.mark.parametrize(
    ("lr_key", "extra", "message"),
    [
        ("far", [], "no HR scene overlaps any LR scene"),
        ("crs", [], "reproject the HR scenes first or pass --reproject"),
        ("odd", [], "the scale must be an integer"),
        ("lr", ["--scale", "2"], "fix --scale or the inputs"),
        ("lr", ["--block", "100000"], "empty split"),
    ],
)
def test_bad_input_gives_a_clear_error(scenes, tmp_path, capsys, lr_key, extra, message):
    rc = main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes[lr_key]), "--out", str(tmp_path / "o"), "--synthetic", "none", *extra])
    assert rc == 1
    err = capsys.readouterr().err
    assert "gapeval pairs: error:" in err and message in err and "Traceback" not in err


def test_usage_errors_exit_2(scenes, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes["lr"]), "--out", str(tmp_path / "o"), "--split", "0.5,0.5"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["pairs", "--hr", str(scenes["hr"]), "--lr", str(scenes["lr"]), "--out", str(tmp_path / "o"), "--scale", "2.5"])
    assert exc.value.code == 2


def test_reflectance_checks_know_whether_a_scale_was_applied(scenes, tmp_path, capsys):
    """The range checks of ``pairs`` are the scoring path's (``was_scaled`` -> ``check_reflectance``/``check_not_tiny``):
    digital numbers with --hr-scale/--lr-scale give the same tiles as reflectance; reflectance divided by a DN scale,
    DN without one, and a corrupt tile of a file whose own scale metadata was applied each get their own advice."""
    from lpips_sat.raster import write_raster

    crs, hr_t, lr_t = _header(scenes["hr"]), _header(scenes["hr"], "transform"), _header(scenes["lr"], "transform")
    hr_dn, lr_dn = np.round(scenes["hr_array"] * 10000), np.round(scenes["lr_array"] * 10000)

    def put(name: str, data: np.ndarray, transform, **kw) -> Path:  # same file names: same tile names
        path = tmp_path / name / (scenes["lr"] if name.endswith("lr") else scenes["hr"]).name
        write_raster(path, data, transform=transform, crs=crs, descriptions=("B04", "B03", "B02", "B08"), **kw)
        return path.parent

    def run(hr: Path, lr: Path, out: str, *extra: str) -> tuple[int, str, list[dict[str, str]]]:
        rc = main(["pairs", "--hr", str(hr), "--lr", str(lr), "--out", str(tmp_path / out), "--scale", "4", "--tile", "128",
                   "--block", "256", "--synthetic", "none", *extra])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return rc, err, _manifest(tmp_path / out) if rc == 0 else []

    dn_hr, dn_lr = put("dn_hr", hr_dn, hr_t, dtype="uint16"), put("dn_lr", lr_dn, lr_t, dtype="uint16")
    rc, _, refl_rows = run(scenes["hr"].parent, scenes["lr"].parent, "refl")
    assert rc == 0 and refl_rows
    rc, _, dn_rows = run(dn_hr, dn_lr, "dn", "--hr-scale", "10000", "--lr-scale", "10000")
    assert rc == 0 and [(r["tile"], r["status"]) for r in dn_rows] == [(r["tile"], r["status"]) for r in refl_rows]
    rc, err, _ = run(dn_hr, dn_lr, "dn_unscaled")
    assert rc == 1 and "look like digital numbers" in err and "--lr-scale 10000" in err
    rc, err, _ = run(scenes["hr"].parent, scenes["lr"].parent, "twice", "--hr-scale", "10000", "--lr-scale", "10000")
    assert rc == 1 and "implausibly small for reflectance" in err and "drop --lr-scale" in err, err
    corrupt = hr_dn.copy()
    corrupt[:, :8, :8] = 65535
    meta_hr = put("meta_hr", corrupt, hr_t, dtype="uint16", scales=[1e-4] * 4)
    rc, err, _ = run(meta_hr, scenes["lr"].parent, "corrupt")
    assert rc == 1 and "even after the scale applied" in err and "look like digital numbers" not in err, err
    rc, _, meta_rows = run(put("meta_ok", hr_dn, hr_t, dtype="uint16", scales=[1e-4] * 4), scenes["lr"].parent, "meta")
    assert rc == 0 and [(r["tile"], r["status"]) for r in meta_rows] == [(r["tile"], r["status"]) for r in refl_rows]


def _header(path: Path, what: str = "crs"):
    import rasterio

    with rasterio.open(path) as ds:
        return getattr(ds, what)
