"""Regression tests of the reliability guarantees (docs/reliability.md): locking, resume semantics (duplicates,
partial and odd rows, odd file names), symlinked folders, assumed band orders, invalid prediction pixels, grids
without CRS, output-folder problems and stale temporary files. Each failed before its fix."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine

from gapeval.cli import main
from gapeval.folders import list_images
from gapeval.results import LOCK_FILE, PairsTable, ResultsLock, read_records_complete
from gapeval.score import score
from lpips_sat import LPIPSSat
from lpips_sat.errors import InputError
from lpips_sat.raster import read_raster, write_raster
from lpips_sat.registry import save_weights

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BANDS = ("B04", "B03", "B02", "B08")


@pytest.fixture(scope="module")
def metric() -> LPIPSSat:
    return LPIPSSat.random()


def scene(name: str = "town") -> tuple[np.ndarray, object]:
    r = read_raster(EXAMPLES / "hr" / f"{name}.tif")
    return (r.data / 10000.0).astype(np.float32), r


def put(path: Path, data: np.ndarray, like: object, **kw) -> Path:
    args = dict(transform=like.transform, crs=like.crs, dtype="float32", descriptions=BANDS)
    args.update(kw)
    return write_raster(path, data, **args)


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    """hr/ and pred/p/ with two scenes; the prediction is the target plus a small offset."""
    for name in ("town", "fields"):
        x, r = scene(name)
        put(tmp_path / "hr" / f"{name}.tif", x, r)
        put(tmp_path / "pred" / "p" / f"{name}.tif", x * 0.97 + 0.002, r)
    return tmp_path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def cli_args(root: Path, *extra: str) -> list[str]:
    return ["score", "--pred", f"p={root / 'pred' / 'p'}", "--target", str(root / "hr"), "--out", str(root / "out"),
            "--weights", "random-tiny", "--no-progress", *extra]


# ------------------------------------------------------------------------------------------------ locking


def test_a_second_run_on_a_locked_folder_is_refused(folders, metric):
    out = folders / "out"
    out.mkdir()
    with ResultsLock(out):
        with pytest.raises(InputError, match=r"in use by another gapeval run \(pid \d+ on "):
            score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out, resume=True)
    assert not (out / LOCK_FILE).exists()  # released and removed
    res = score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out, resume=True)
    assert len(res.records) == 2


def test_a_stale_lock_of_a_dead_run_is_taken_over(folders, metric, caplog):
    out = folders / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))  # kill -9 leftover
    res = score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out)
    assert len(res.records) == 2 and "stale lock (pid 999999 on elsewhere" in caplog.text


# ------------------------------------------------------------------------------------------------ resume


def test_resume_keeps_one_row_per_key_and_says_so(folders, metric, caplog):
    out = folders / "out"
    first = score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out)
    lines = (out / "pairs.csv").read_text().splitlines(keepends=True)
    (out / "pairs.csv").write_text("".join(lines + lines[1:]))  # what two concurrent appending runs left
    res = score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out, resume=True)
    assert "2 duplicate rows" in caplog.text
    assert len(res.records) == 2 and res.summary["pred_sets"]["p"]["n_pairs"] == 2
    assert res.summary["pred_sets"]["p"]["metrics"]["psnr"]["mean"] == pytest.approx(first.summary["pred_sets"]["p"]["metrics"]["psnr"]["mean"])
    assert len((out / "pairs.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("name", ["a\nb", "c\u2028d", 'q"uote,comma'])
def test_odd_file_names_resume_without_duplicates(tmp_path, metric, name):
    x, r = scene()
    put(tmp_path / "hr" / f"{name}.tif", x, r)
    put(tmp_path / "pred" / "p" / f"{name}.tif", x * 0.98, r)
    out = tmp_path / "out"
    first = score({"p": tmp_path / "pred" / "p"}, tmp_path / "hr", metric=metric, out=out)
    for _ in range(2):
        res = score({"p": tmp_path / "pred" / "p"}, tmp_path / "hr", metric=metric, out=out, resume=True)
        assert [r["key"] for r in res.records] == [name]
        assert res.records[0]["psnr"] == pytest.approx(first.records[0]["psnr"])
    with open(out / "pairs.csv", newline="") as fh:
        assert [row["key"] for row in csv.DictReader(fh)] == [name]


def test_partial_last_record_is_dropped_even_inside_a_quoted_newline(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('a,b\n1,"x\ny"\n2,"half\nwri')  # the last append was cut inside a quoted field
    assert read_records_complete(path) == [["a", "b"], ["1", "x\ny"]]
    assert path.read_text() == 'a,b\n1,"x\ny"\n'
    path.write_text('a,b\n1,"x\ny"\n2,"cut after a newline\n')  # ends with a newline, but inside quotes
    assert read_records_complete(path) == [["a", "b"], ["1", "x\ny"]]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text table"),
        (b"pred_set,key\n\x00\x00\n", "contains NUL bytes"),
        (b"pred_set,key\na\n", "row 2 has 1 fields"),
        (b'pred_set,key\n"bad"x,1\nok,2\n', "not a readable CSV"),
    ],
)
def test_binary_pairs_csv_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "pairs.csv").write_bytes(content)
    with pytest.raises(InputError, match=message):
        PairsTable(tmp_path / "pairs.csv", ["pred_set", "key"], "h", resume=True, overwrite=False)


def test_hand_edited_rows_are_clear_errors(folders, metric, capsys):
    out = folders / "out"
    score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out)
    text = (out / "pairs.csv").read_text().splitlines(keepends=True)
    (out / "pairs.csv").write_text(text[0] + text[1].replace(",", ",,", 1) + text[2])
    code, _, err = run_cli(cli_args(folders, "--resume"), capsys)
    assert code == 1 and "row 2 has" in err and "pairs.csv" in err
    cells = text[1].split(",")
    cells[4] = "not-a-number"  # valid_fraction
    (out / "pairs.csv").write_text(text[0] + ",".join(cells) + text[2])
    code, _, err = run_cli(cli_args(folders, "--resume"), capsys)
    assert code == 1 and "number column holds text" in err


# ------------------------------------------------------------------------------------------------ folders


def test_symlinked_subfolders_are_followed_and_loops_are_not(folders, metric):
    elsewhere = folders / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    x, r = scene("village_woods")
    put(folders / "hr" / "sub" / "deep" / "v.tif", x, r)
    put(elsewhere / "deep" / "v.tif", x * 0.98, r)
    os.symlink(elsewhere, folders / "pred" / "p" / "sub")
    os.symlink("..", elsewhere / "deep" / "loop")  # a loop back up the tree
    keys = list_images(folders / "pred" / "p")
    assert sorted(keys) == ["fields", "sub/deep/v", "town"]
    res = score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric)
    assert res.summary["pred_sets"]["p"]["n_scored"] == 3 and not res.summary["unpaired"]


def test_broken_symlink_is_an_error_not_a_silent_drop(folders):
    os.symlink(folders / "nowhere.tif", folders / "pred" / "p" / "gone.tif")
    with pytest.raises(InputError, match="gone.tif: broken symbolic link"):
        list_images(folders / "pred" / "p")


# ------------------------------------------------------------------------------------------------ bands


def test_assumed_band_order_is_warned_recorded_and_refusable(folders, capsys):
    x, r = scene("town")
    put(folders / "pred" / "p" / "town.tif", x[[2, 1, 0, 3]], r, descriptions=None)  # B02,B03,B04,B08 without names
    code, _, err = run_cli(cli_args(folders), capsys)
    assert code == 0 and "warning: 1 pred file(s) have no band names" in err and "--strict-bands" in err
    summary = json.loads((folders / "out" / "summary.json").read_text())
    assert summary["inputs"]["assumed_band_order"] == {"pred": {"order": list(BANDS), "files": [str(folders / "pred" / "p" / "town.tif")]}}
    code, _, err = run_cli(cli_args(folders, "--overwrite", "--strict-bands"), capsys)
    assert code == 1 and "--strict-bands" in err and "town.tif" in err
    code, _, err = run_cli(cli_args(folders, "--overwrite", "--strict-bands", "--pred-bands", "B02,B03,B04,B08"), capsys)
    assert code == 0 and "warning" not in err


# ------------------------------------------------------------------------------------------------ invalid predictions


def test_nan_prediction_pixels_fail_the_pair_by_default(folders, metric, capsys):
    x, r = scene("town")
    holes = x * 0.97 + 0.002
    holes[:, 10:20, 10:20] = np.nan
    put(folders / "pred" / "p" / "town.tif", holes, r)
    code, out, err = run_cli(cli_args(folders), capsys)
    assert code == 3 and "failed p/town" in out and "100 of the" in out and "1 pair(s) failed" in err
    rows = {row["key"]: row for row in csv.DictReader(open(folders / "out" / "pairs.csv", newline=""))}
    assert rows["town"]["status"] == "failed" and rows["town"]["lpips_sat"] == "" and rows["fields"]["status"] == "ok"
    code, out, err = run_cli(cli_args(folders, "--overwrite", "--invalid-pred", "mask"), capsys)
    assert code == 0 and "note: 1 pair(s) had invalid prediction pixels" in err


def test_target_nodata_under_prediction_nodata_is_not_a_defect(folders, metric):
    x, r = scene("town")
    t, p = x.copy(), x * 0.97
    t[:, :8] = -1.0
    p[:, :8] = np.nan  # the prediction has no value exactly where the target has none
    put(folders / "hr" / "town.tif", t, r, nodata=-1.0)
    put(folders / "pred" / "p" / "town.tif", p, r)
    res = score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric)
    assert all(rec["status"] == "ok" for rec in res.records)


def test_invalid_lr_pixels_are_counted_warned_and_recorded(folders, capsys):
    """LR nodata is the input's, not the prediction's: it stays masked out of the LR-consistency metrics (the same
    pixels for every prediction set, exit 0), but each pair counts it, the console names the file and the count, and
    summary.json lists it; in both protocols, for NaN in float reflectance and declared nodata in digital numbers."""
    lr_dir = folders / "lr"
    town = read_raster(EXAMPLES / "lr" / "town.tif")
    data = (town.data / 10000.0).astype(np.float32)
    data[:, 2:5, 7:11] = np.nan  # 3 x 4 = 12 LR pixels
    put(lr_dir / "town.tif", data, town)
    fields = read_raster(EXAMPLES / "lr" / "fields.tif")
    dn = fields.data.astype(np.uint16)
    dn[:, 0, :5] = 0  # 5 LR pixels of declared nodata
    write_raster(lr_dir / "fields.tif", dn, transform=fields.transform, crs=fields.crs, dtype="uint16", nodata=0,
                 descriptions=BANDS, scales=[1e-4] * 4)
    n_lr = town.data.shape[1] * town.data.shape[2]
    expected = {"town": (12, 12 / n_lr), "fields": (5, 5 / n_lr)}
    for protocol in ("gapeval", "opensr-test"):
        code, _, err = run_cli(cli_args(folders, "--lr", str(lr_dir), "--protocol", protocol, "--overwrite"), capsys)
        assert code == 0, err
        rows = {row["key"]: row for row in csv.DictReader(open(folders / "out" / "pairs.csv", newline=""))}
        got = {k: (int(r["lr_invalid_px"]), float(r["lr_invalid_fraction"])) for k, r in rows.items()}
        assert got == expected and all(r["status"] == "ok" for r in rows.values())
        for key, (n, _) in expected.items():
            assert f"warning: {lr_dir / key}.tif: {n} LR pixels" in err, err
        recorded = json.loads((folders / "out" / "summary.json").read_text())["lr_invalid"]
        assert {Path(p).stem: v["invalid_px"] for p, v in recorded.items()} == {k: n for k, (n, _) in expected.items()}
        assert "lr_invalid_px" not in json.loads((folders / "out" / "summary.json").read_text())["pred_sets"]["p"]["metrics"]
    put(lr_dir / "town.tif", (town.data / 10000.0).astype(np.float32), town)  # a clean LR: zero, no warning
    (lr_dir / "fields.tif").unlink()
    shutil.copy(EXAMPLES / "lr" / "fields.tif", lr_dir / "fields.tif")
    code, _, err = run_cli(cli_args(folders, "--lr", str(lr_dir), "--overwrite"), capsys)
    rows = list(csv.DictReader(open(folders / "out" / "pairs.csv", newline="")))
    assert code == 0 and "LR pixels" not in err and {r["lr_invalid_px"] for r in rows} == {"0"}


# ------------------------------------------------------------------------------------------------ grids


def test_geotransform_is_compared_when_the_crs_is_missing(folders, metric):
    x, r = scene("town")
    put(folders / "pred" / "p" / "town.tif", x * 0.97, r, crs=None, transform=r.transform @ Affine.translation(10, 0))
    with pytest.raises(InputError, match="offset by up to 10.00 px"):
        score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric)
    put(folders / "pred" / "p" / "town.tif", x * 0.97, r, crs=None)  # same transform, no CRS: accepted
    assert all(rec["status"] == "ok" for rec in score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric).records)


# ------------------------------------------------------------------------------------------------ output folder


def test_bad_output_folders_are_clear_errors(folders, capsys):
    (folders / "file").write_text("x")
    for out, needle in ((folders / "file", "is a file"), (folders / "file" / "sub", "part of the path is a file")):
        code, _, err = run_cli([*cli_args(folders)[:-5], "--out", str(out), "--weights", "random-tiny", "--no-progress"], capsys)
        assert code == 1 and needle in err, err
    (folders / "out" / "summary.json").mkdir(parents=True)
    code, _, err = run_cli(cli_args(folders), capsys)
    assert code == 1 and "summary.json: is a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_unwritable_output_folder(folders, capsys):
    (folders / "out").mkdir()
    os.chmod(folders / "out", 0o500)
    try:
        code, _, err = run_cli(cli_args(folders), capsys)
    finally:
        os.chmod(folders / "out", 0o700)
    assert code == 1 and "not writable" in err


def test_temporaries_of_an_interrupted_run_are_removed(folders, metric):
    out = folders / "out"
    (out / "maps" / "p").mkdir(parents=True)
    for leftover in (out / ".summary.json.abc123.tmp", out / "maps" / "p" / ".town.tif.x1y2.tmp"):
        leftover.write_text("partial")
    score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, out=out, maps=True)
    assert not list(out.rglob("*.tmp"))
    shutil.rmtree(out)


# ------------------------------------------------------------------------------------------------ messages, odd calls


def test_gap_on_a_binary_pairs_csv_is_an_error_line(tmp_path, capsys):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "pairs.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    code, _, err = run_cli(["gap", "--run", f"a={tmp_path / 'a'}", "--run", f"b={tmp_path / 'b'}", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "pairs.csv: not a text table" in err


def test_degrade_out_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["degrade", "--hr", str(EXAMPLES / "hr"), "--out", str(tmp_path / "file"), "--profile", "bicubic"], capsys)
    assert code == 1 and "is a file" in err


def _compare_setup(tmp_path: Path) -> Path:
    """a.npy, b.npy (no band names) and tiny weights w.safetensors in ``tmp_path``."""
    x, _ = scene()
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x * 0.9)
    m = LPIPSSat.random(seed=1)
    tensors = {f"backbone.{k}": v for k, v in m.backbone.state_dict().items()}
    tensors.update({f"heads.{i}.weight": h.detach() for i, h in enumerate(m.heads)})
    meta = {"arch": "resnet18", "bands": json.dumps(list(m.model_bands)), "mean": json.dumps(m.mean.flatten().tolist()),
            "std": json.dumps(m.std.flatten().tolist()), "width_div": "8"}
    save_weights(tmp_path / "w.safetensors", tensors, meta, dtype=torch.float32)
    return tmp_path / "w.safetensors"


def test_spatial_out_to_an_unwritable_place_is_an_error_line(tmp_path, capsys):
    import lpips_sat.cli

    weights = _compare_setup(tmp_path)
    (tmp_path / "file").write_text("x")
    code = lpips_sat.cli.main([
        "compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--weights", str(weights), "--spatial-out", str(tmp_path / "file" / "m.npy")
    ])
    err = capsys.readouterr().err
    assert code == 1 and "m.npy: cannot write" in err and "Traceback" not in err


def test_compare_warns_when_it_assumes_the_band_order(tmp_path, capsys):
    import lpips_sat.cli

    weights = _compare_setup(tmp_path)
    assert lpips_sat.cli.main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--weights", str(weights)]) == 0
    err = capsys.readouterr().err
    assert "a.npy has no band names; assuming B04,B03,B02,B08" in err and "b.npy has no band names" in err
    assert lpips_sat.cli.main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--weights", str(weights), "--bands", "s2-rgbn"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_implausible_values_after_a_declared_scale_say_the_file_may_be_corrupt(folders, metric):
    x, r = scene()
    dn = np.rint(x * 10000).astype(np.uint16)
    dn[:, 5:9, 5:9] = 65000  # a tile decoded to garbage
    put(folders / "pred" / "p" / "town.tif", dn, r, dtype="uint16", scales=[1e-4] * 4)
    with pytest.raises(InputError, match="implausible for reflectance even after the scale.*may be corrupt") as err:
        score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric)
    assert "pass --pred-scale 10000" not in str(err.value)


def test_tampered_default_weights_are_not_called_missing(monkeypatch):
    from gapeval.scoring import weights
    from lpips_sat.errors import MissingFileError, WeightsError

    class Tampered(LPIPSSat):
        def __init__(self, name):
            raise WeightsError(f"{name}.safetensors: sha256 abc does not match the registered def; the file is corrupt or was modified")

    monkeypatch.setattr(weights, "LPIPSSat", Tampered)
    with pytest.raises(WeightsError) as err:
        weights.load_metric()
    assert "does not match" in str(err.value) and "not installed" not in str(err.value)

    class Missing(LPIPSSat):
        def __init__(self, name):
            raise MissingFileError(f"{name}.safetensors does not exist")

    monkeypatch.setattr(weights, "LPIPSSat", Missing)
    with pytest.raises(WeightsError, match="not installed"):
        weights.load_metric()


def test_empty_batch_gives_empty_distances(metric):
    x = torch.rand(2, 4, 64, 64) * 0.3
    assert metric(x[:0], x[:0]).shape == (0,)
    assert metric(x[:0], x[:0], spatial=True).shape == (0, 1, 64, 64)


def test_unavailable_device_is_a_clear_error(folders, metric):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="CUDA is not available"):
        score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, device="cuda")


@pytest.mark.slow
def test_two_concurrent_runs_never_duplicate_rows(folders):
    """Two real processes on one --out at once: each either scores or is refused; the folder holds each pair once."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "gapeval.cli", *cli_args(folders, "--resume")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or (code == 1 and "in use by another gapeval run" in err), err
        assert "Traceback" not in err
    with open(folders / "out" / "pairs.csv", newline="") as fh:
        assert sorted(row["key"] for row in csv.DictReader(fh)) == ["fields", "town"]


def test_an_all_black_prediction_is_not_blamed_on_a_scale(folders, metric):
    x, r = scene()
    put(folders / "pred" / "p" / "town.tif", np.zeros_like(x), r)
    with pytest.raises(InputError, match="no scale was applied.*empty") as err:
        score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric)
    assert "drop --pred-scale" not in str(err.value)
    with pytest.raises(InputError, match="drop --pred-scale"):  # divided although it was reflectance already
        put(folders / "pred" / "p" / "town.tif", x, r)
        score({"p": folders / "pred" / "p"}, folders / "hr", metric=metric, pred_scale=10000)
