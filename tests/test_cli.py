"""``lpips-sat`` CLI: compare (GeoTIFF / PNG / .npy), info (registry, sha256 check), delegation to training modules.

Distances printed by ``compare`` are checked against the library called directly on the same pixels; real
Sentinel-2 crops come from ``shared/data`` (skipped if absent) and a tiny random-weight metric stands in for
the shipped weights.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lpips_sat import LPIPSSat, cli
from lpips_sat.registry import REGISTRY, WeightsEntry, save_weights

S2_STACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"
RGBN_OF_13 = [3, 2, 1, 7]  # B04, B03, B02, B08 in the B01..B12 order


def _tiny_weights(path: Path) -> tuple[Path, LPIPSSat]:
    m = LPIPSSat.random(seed=1)
    tensors = {f"backbone.{k}": v for k, v in m.backbone.state_dict().items()}
    tensors.update({f"heads.{i}.weight": h.detach() for i, h in enumerate(m.heads)})
    meta = {"arch": "resnet18", "bands": json.dumps(list(m.model_bands)), "mean": json.dumps(m.mean.flatten().tolist()),
            "std": json.dumps(m.std.flatten().tolist()), "width_div": "8", "training_data": "none (random test weights)"}
    save_weights(path, tensors, meta, dtype=torch.float32)
    return path, LPIPSSat(path)


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, LPIPSSat]:
    return _tiny_weights(tmp_path / "tiny.safetensors")


@pytest.fixture()
def s2_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Two 64x64 13-band DN GeoTIFF crops of the real S2 stack: a window and the same window shifted by 2 px."""
    rasterio = pytest.importorskip("rasterio")
    if not S2_STACK.exists():
        pytest.skip(f"{S2_STACK} not present")
    from rasterio.windows import Window

    out = []
    with rasterio.open(S2_STACK) as ds:
        for name, col in (("a.tif", 300), ("b.tif", 302)):
            win = Window(col, 400, 64, 64)
            dn = ds.read(window=win)
            path = tmp_path / name
            with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=13, dtype="uint16",
                               transform=ds.window_transform(Window(300, 400, 64, 64)), crs=ds.crs) as dst:
                dst.write(dn)
                for i, desc in enumerate(ds.descriptions, start=1):
                    dst.set_band_description(i, desc)
            out += [path, dn]
    return out[0], out[2], out[1], out[3]


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ compare
def test_compare_geotiff_dn_matches_library(s2_pair, tiny, capsys) -> None:
    a, b, dn_a, dn_b = s2_pair
    weights, m = tiny
    code, out, err = run(["compare", a, b, "--weights", weights, "--input-range", "dn", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    expected = m(torch.from_numpy(dn_a[RGBN_OF_13] / 10000.0).float()[None], torch.from_numpy(dn_b[RGBN_OF_13] / 10000.0).float()[None])
    assert res["distance"] == pytest.approx(float(expected[0]), rel=1e-5)
    assert res["bands_a"][:4] == ["B01", "B02", "B03", "B04"]  # taken from the GeoTIFF band descriptions
    assert sum(res["per_layer"].values()) == pytest.approx(res["distance"], rel=1e-5)


def test_compare_text_output_and_scale_equivalent_to_dn(s2_pair, tiny, capsys) -> None:
    a, b, _, _ = s2_pair
    weights, _ = tiny
    code_dn, out_dn, _ = run(["compare", a, b, "--weights", weights, "--input-range", "dn"], capsys)
    code_sc, out_sc, _ = run(["compare", a, b, "--weights", weights, "--scale", "10000"], capsys)
    assert code_dn == code_sc == 0
    assert float(out_dn) == pytest.approx(float(out_sc), rel=1e-6) and float(out_dn) > 0


def test_compare_identical_files_is_zero(s2_pair, tiny, capsys) -> None:
    a, _, _, _ = s2_pair
    code, out, _ = run(["compare", a, a, "--weights", tiny[0], "--input-range", "dn"], capsys)
    assert code == 0 and float(out) == 0.0


def test_compare_spatial_map_geotiff(s2_pair, tiny, tmp_path, capsys) -> None:
    rasterio = pytest.importorskip("rasterio")
    a, b, _, _ = s2_pair
    out_map = tmp_path / "maps" / "map.tif"
    code, out, _ = run(["compare", a, b, "--weights", tiny[0], "--input-range", "dn", "--spatial-out", out_map, "--json"], capsys)
    assert code == 0
    with rasterio.open(out_map) as ds, rasterio.open(a) as src:
        dist_map = ds.read(1)
        assert ds.transform == src.transform and ds.crs == src.crs
    assert dist_map.shape == (64, 64) and (dist_map >= 0).all()
    assert float(dist_map.mean()) == pytest.approx(json.loads(out)["distance"], rel=1e-5)  # 64 px: exact mean up to rounding


def test_compare_npy_and_png(tiny, tmp_path, capsys) -> None:
    """.npy holds reflectance as is; an 8-bit PNG needs an explicit --scale and its band order."""
    from PIL import Image

    _, m = tiny
    gen = np.random.default_rng(0)
    x = (gen.random((4, 48, 40)) * 0.3).astype(np.float32)
    y = np.clip(x + gen.normal(0, 0.02, x.shape), 0, 1).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    code, out, _ = run(["compare", tmp_path / "x.npy", tmp_path / "y.npy", "--weights", tiny[0], "--spatial-out", tmp_path / "m.npy"], capsys)
    assert code == 0
    assert float(out) == pytest.approx(float(m(torch.from_numpy(x)[None], torch.from_numpy(y)[None])[0]), rel=1e-4)
    assert np.load(tmp_path / "m.npy").shape == (48, 40)

    # PNG: RGBA channels carrying R, G, B, NIR in 8 bits, scale 850 -> reflectance 0..0.3
    px, py = (np.round(arr * 850).clip(0, 255).astype(np.uint8) for arr in (x, y))
    Image.fromarray(np.moveaxis(px, 0, -1), mode="RGBA").save(tmp_path / "x.png")
    Image.fromarray(np.moveaxis(py, 0, -1), mode="RGBA").save(tmp_path / "y.png")
    code, out, err = run(["compare", tmp_path / "x.png", tmp_path / "y.png", "--weights", tiny[0], "--scale", "850", "--bands", "B04,B03,B02,B08"], capsys)
    assert code == 0, err
    expected = m(torch.from_numpy(px / 850.0).float()[None], torch.from_numpy(py / 850.0).float()[None])
    assert float(out) == pytest.approx(float(expected[0]), rel=1e-4)
    # an RGB PNG lacks the NIR band the model needs
    Image.fromarray(np.moveaxis(px[:3], 0, -1), mode="RGB").save(tmp_path / "rgb.png")
    code, _, err = run(["compare", tmp_path / "rgb.png", tmp_path / "rgb.png", "--weights", tiny[0], "--scale", "850", "--bands", "rgb"], capsys)
    assert code == 1 and "B08" in err and "rgb.png" in err


@pytest.mark.parametrize("problem, needle", [
    ("missing", "does not exist"),
    ("dn-as-reflectance", "--input-range"),
    ("size", "resample/crop"),
    ("bands", "band order with --bands"),
    ("nodata", "nodata/NaN/inf"),
    ("scale-and-dn", "--scale and --input-range dn"),
    ("weights", "Unknown weights"),
])
def test_compare_errors_exit_1_naming_the_problem(problem, needle, tiny, tmp_path, capsys) -> None:
    gen = np.random.default_rng(1)
    good = (gen.random((4, 32, 32)) * 0.3).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    other, extra = tmp_path / "other.npy", []
    if problem == "missing":
        other = tmp_path / "nope.npy"
    elif problem == "dn-as-reflectance":
        np.save(other, good * 10000)
    elif problem == "size":
        np.save(other, good[:, :, :31])
    elif problem == "bands":
        np.save(other, np.concatenate([good, good[:1]]))
    elif problem == "nodata":
        bad = good.copy()
        bad[:, 3, 4] = np.nan
        np.save(other, bad)
    else:
        np.save(other, good)
        extra = {"scale-and-dn": ["--scale", "2", "--input-range", "dn"], "weights": ["--weights", "no-such-weights"]}[problem]
    args = ["compare", tmp_path / "good.npy", other] + (["--weights", tiny[0]] if problem != "weights" else []) + extra
    code, _, err = run(args, capsys)
    assert code == 1
    assert needle in err
    if problem in ("missing", "size", "bands", "nodata", "dn-as-reflectance"):
        assert "other.npy" in err or "nope.npy" in err


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "only-one.tif"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "a.npy", "b.npy", "--input-range", "toa"])
    assert info.value.code == 2


def test_missing_rasterio_says_how_to_install(s2_pair, tiny, monkeypatch, capsys) -> None:
    a, b, _, _ = s2_pair
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio -> ImportError
    monkeypatch.setitem(sys.modules, "rasterio.errors", None)
    code, _, err = run(["compare", a, b, "--weights", tiny[0], "--input-range", "dn"], capsys)
    assert code == 1 and 'pip install "lpips-sat[eval]"' in err and "a.tif" in err


# ------------------------------------------------------------------------------------------------ info
def test_info_lists_external_backbones(capsys) -> None:
    code, out, _ = run(["info"], capsys)
    assert code == 0
    assert "ssl4eo-s12-rn18-moco-13b" in out and "CC-BY-4.0" in out and "B8A" in out


@pytest.fixture()
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path, m = _tiny_weights(tmp_path / "tiny-test.safetensors")
    from lpips_sat.registry import sha256_file

    entry = WeightsEntry(name="tiny-test", arch="resnet18", bands=m.model_bands, mean=(0.1,) * 4, std=(0.1,) * 4, file=path.name,
                         sha256=sha256_file(path), heads="calibrated", source="unit test", licence="CC0-1.0")
    from lpips_sat.registry import _load_shipped

    _load_shipped()  # then hide the shipped entries: this test's weights folder holds only tiny-test
    for name in [k for k, e in REGISTRY.items() if e.file]:
        monkeypatch.delitem(REGISTRY, name)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setattr("lpips_sat.registry.weights_dir", lambda: tmp_path)
    return path


def test_info_checks_sha256_and_shows_metadata(registered: Path, capsys) -> None:
    code, out, _ = run(["info", "--weights", "tiny-test"], capsys)
    assert code == 0
    assert "sha256" in out and ": OK" in out and "training_data: none (random test weights)" in out
    code, out, _ = run(["info", "--json"], capsys)
    records = {r["name"]: r for r in json.loads(out)["records"]}
    assert code == 0 and records["tiny-test"]["sha256_ok"] is True and records["tiny-test"]["metadata"]["width_div"] == "8"


def test_info_reports_tampered_file_exit_1(registered: Path, capsys) -> None:
    data = bytearray(registered.read_bytes())
    data[-3] ^= 0x10
    registered.write_bytes(bytes(data))
    code, out, err = run(["info"], capsys)
    assert code == 1 and "MISMATCH" in out and "tiny-test" in err


def test_info_on_a_file(tiny, capsys) -> None:
    code, out, _ = run(["info", "--weights", tiny[0]], capsys)
    assert code == 0 and "no registered sha256" in out and "bands" in out


# ------------------------------------------------------------------------------------------------ training delegation
def test_training_commands_delegate(monkeypatch, capsys) -> None:
    calls = {}
    fake = types.ModuleType("fake_train_module")

    def add_arguments(p):
        p.add_argument("--data", required=True)

    def run_fake(args):
        calls["data"] = args.data
        return 0

    fake.add_arguments, fake.run = add_arguments, run_fake
    monkeypatch.setitem(sys.modules, "fake_train_module", fake)
    monkeypatch.setitem(cli.TRAIN_COMMANDS, "pretrain", ("fake_train_module", "fake"))
    code, _, _ = run(["pretrain", "--data", "somewhere"], capsys)
    assert code == 0 and calls == {"data": "somewhere"}


def test_missing_training_module_fails_clearly(monkeypatch, capsys) -> None:
    monkeypatch.setitem(cli.TRAIN_COMMANDS, "calibrate", ("lpips_sat.train.no_such_module", "x"))
    code, _, err = run(["calibrate", "--backbone", "x.safetensors", "--data", "d"], capsys)
    assert code == 2 and "not available" in err and "no_such_module" in err


@pytest.mark.parametrize("command", ["pretrain", "calibrate"])
def test_real_training_commands_have_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0 and "--data" in capsys.readouterr().out


def test_compare_uses_the_files_band_scale_metadata(capsys) -> None:
    """The shipped examples are uint16 DN with GDAL scale 1e-4: compare reads them as reflectance without options."""
    rasterio = pytest.importorskip("rasterio")
    root = Path(__file__).resolve().parents[1] / "examples"
    hr, sr = root / "hr" / "town.tif", root / "pred" / "bicubic" / "town.tif"
    code, out, _ = run(["compare", hr, sr], capsys)
    assert code == 0
    with rasterio.open(hr) as a, rasterio.open(sr) as b:
        assert a.scales[0] == pytest.approx(1e-4)
        x = torch.from_numpy(a.read().astype("float32") / 10000)[None]
        y = torch.from_numpy(b.read().astype("float32") / 10000)[None]
    expected = float(LPIPSSat()(x, y))  # compare(a, b) is metric(a, b) (a registering metric moves a onto b)
    assert float(out.split()[0]) == pytest.approx(expected, rel=1e-4)
