"""Regression tests of error paths outside the scoring internals (docs/reliability.md): empty batches, device
checks, weights whose checksum differs, range-check advice for files that declare a scale, unwritable outputs,
unreadable ``pairs.csv`` for ``gapeval gap``, and temporary files left by killed runs. Each failed before its fix."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gapeval import cli as gcli
from gapeval.reflectance import check_reflectance, was_scaled
from lpips_sat import LPIPSSat, lpips_sat
from lpips_sat.atomic import STALE_AFTER_S, atomic_path, is_stale_temporary, make_folder, remove_stale_temporaries, write_text_atomic
from lpips_sat.backbones import TAPS
from lpips_sat.errors import InputError, OutputError, WeightsError
from lpips_sat.options import check_device
from lpips_sat.raster import read_raster, write_raster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = gcli.main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# ------------------------------------------------------------------------------------------------ empty batch


@pytest.fixture(scope="module")
def metric() -> LPIPSSat:
    return LPIPSSat.random()


def test_an_empty_batch_gives_empty_results_in_every_form(metric: LPIPSSat) -> None:
    x = torch.rand(3, 4, 64, 48) * 0.3
    e = x[:0]
    assert metric(e, e).shape == (0,)
    assert metric(e, e, spatial=True).shape == (0, 1, 64, 48)
    total, parts = metric(e, e, per_layer=True)
    assert total.shape == (0,) and len(parts) == len(TAPS) and all(p.shape == (0,) for p in parts)
    total, parts = metric(e, e, per_layer=True, spatial=True)
    assert total.shape == (0, 1, 64, 48) and all(p.shape == (0, 1, 64, 48) for p in parts)
    # consistent with the non-empty result: the empty batch is the first 0 rows of a full one
    full = metric(x, x.flip(0))
    assert torch.equal(metric(x[:0], x.flip(0)[:0]), full[:0])
    # as a loss: the backward pass runs and gives a zero gradient of the right shape
    sr = x.clone().requires_grad_(True)
    metric(sr[:0], x[:0]).sum().backward()
    assert sr.grad is not None and sr.grad.shape == x.shape and float(sr.grad.abs().sum()) == 0.0
    assert metric.features(e)[0].shape[0] == 0


def test_an_empty_batch_is_still_validated(metric: LPIPSSat) -> None:
    with pytest.raises(InputError, match="has 3 bands"):
        metric(torch.zeros(0, 3, 64, 64), torch.zeros(0, 3, 64, 64))
    with pytest.raises(InputError, match="at least 32x32"):
        metric(torch.zeros(0, 4, 16, 16), torch.zeros(0, 4, 16, 16))
    with pytest.raises(InputError, match="same shape"):
        metric(torch.zeros(0, 4, 64, 64), torch.zeros(0, 4, 64, 32))


def test_an_empty_batch_through_the_functional_and_running_forms(metric: LPIPSSat) -> None:
    from lpips_sat.running import LPIPSSatMetric

    e = torch.zeros(0, 4, 32, 32)
    assert lpips_sat(e, e).shape == (0,)  # shipped weights
    running = LPIPSSatMetric(metric)
    hr = torch.rand(2, 4, 32, 32) * 0.3
    running.update(hr, hr * 0.9)
    before = float(running.compute())
    running.update(e, e)
    assert running.count == 2 and float(running.compute()) == before


# ------------------------------------------------------------------------------------------------ devices


def test_check_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_device("cpu") == "cpu"
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        check_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InputError, match="CUDA is not available on this machine"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(InputError, match=r"has 1 CUDA device\(s\)"):
        check_device("cuda:3")


def test_the_score_api_checks_its_device_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from gapeval.scoring.weights import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------------------------ weights checksum


@pytest.fixture()
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped weights folder copied to ``tmp_path`` and used in place of the real one."""
    import lpips_sat.metric as metric_module
    from lpips_sat.registry import weights_dir

    folder = tmp_path / "weights"
    shutil.copytree(weights_dir(), folder)
    monkeypatch.setattr(metric_module, "weights_dir", lambda: folder)
    return folder


def test_tampered_shipped_weights_are_not_called_missing(weights_copy: Path, capsys: pytest.CaptureFixture) -> None:
    from gapeval.scoring.weights import load_metric
    from lpips_sat.registry import DEFAULT_NAME, get_entry

    path = weights_copy / str(get_entry(DEFAULT_NAME).file)  # the default's own file (several weights are shipped)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # one byte of tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError) as info:
        load_metric(DEFAULT_NAME)
    message = str(info.value)
    assert "present but its sha256" in message and "corrupt or was modified (tampered)" in message
    assert "not installed" not in message and "random-tiny" not in message

    path.unlink()  # absent: now the hint applies
    with pytest.raises(WeightsError, match="not installed; reinstall lpips-sat, or use `--weights random-tiny`"):
        load_metric(DEFAULT_NAME)


# ------------------------------------------------------------------------------------------------ range checks


def _dn_file(path: Path, values: np.ndarray, scales: tuple[float, ...] | None) -> Path:
    like = read_raster(EXAMPLES / "hr" / "town.tif")
    return write_raster(path, values, transform=like.transform, crs=like.crs, descriptions=like.descriptions, dtype="uint16", scales=scales)


def test_was_scaled_knows_file_scales_and_explicit_ones() -> None:
    one, zero = np.ones(4, np.float32), np.zeros(4, np.float32)
    assert was_scaled(None, np.full(4, 1e-4, np.float32), zero)  # the file's own scale metadata
    assert was_scaled(None, one, np.full(4, -0.1, np.float32))  # its offset alone
    assert was_scaled(10000.0, np.full(4, 1e-4, np.float32), zero)  # an explicit scale
    assert not was_scaled(None, one, zero)  # raw values: the DN advice applies


def test_implausible_values_after_a_scale_say_the_file_may_be_corrupt() -> None:
    data, valid = np.full((4, 8, 8), 6.5535, np.float32), np.ones((8, 8), bool)  # 65535 DN x 0.0001: garbage decoded
    with pytest.raises(InputError) as info:
        check_reflectance(data, valid, Path("x.tif"), "--pred-scale", scaled=True)
    assert "implausible for reflectance even after the scale" in str(info.value) and "may be corrupt" in str(info.value)
    assert "pass --pred-scale 10000" not in str(info.value)
    with pytest.raises(InputError, match="pass --pred-scale 10000"):  # unscaled values: the DN advice stays
        check_reflectance(data * 10000, valid, Path("x.tif"), "--pred-scale")


def test_a_garbage_tile_with_a_declared_scale_through_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A file that declares scale 0.0001 but holds garbage (all 65535): degrade and score say it may be corrupt."""
    hr = tmp_path / "hr"
    _dn_file(hr / "town.tif", np.full((4, 64, 64), 65535, np.uint16), (1e-4,) * 4)
    code, _, err = run(["degrade", "--hr", str(hr), "--out", str(tmp_path / "lr"), "--profile", "bicubic"], capsys)
    assert code == 1 and "the file may be corrupt" in err and "pass --hr-scale" not in err
    pred = tmp_path / "pred"
    _dn_file(pred / "town.tif", np.full((4, 64, 64), 65535, np.uint16), (1e-4,) * 4)
    (tmp_path / "t").mkdir()
    shutil.copy(EXAMPLES / "hr" / "town.tif", tmp_path / "t" / "town.tif")
    code, out, err = run(["score", "--pred", str(pred), "--target", str(tmp_path / "t"), "--out", str(tmp_path / "o"), "--weights", "random-tiny",
                          "--no-progress"], capsys)
    assert code in (1, 3) and "the file may be corrupt" in out + err and "pass --pred-scale 10000" not in out + err


# ------------------------------------------------------------------------------------------------ outputs


def test_make_folder_and_atomic_writes_refuse_files_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        make_folder(blocker, "--out")
    with pytest.raises(OutputError, match="part of the path is a file"):
        make_folder(blocker / "sub", "--out")
    with pytest.raises(OutputError):
        write_text_atomic(blocker / "x.json", "{}")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_text_atomic(tmp_path / "dir.json", "{}")
    assert isinstance(OutputError("x"), OSError)  # callers catching OSError keep working


def test_gap_on_a_binary_pairs_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "pairs.csv").write_bytes(bytes(range(256)) * 8)
    argv = ["gap", "--run", f"a={run_dir}", "--run", f"b={run_dir}", "--out", str(tmp_path / "o"), "--no-images"]
    code, _, err = run(argv, capsys)
    assert code == 1 and "pairs.csv: not a text table" in err and "run 'a' must name a results folder written by `gapeval score`" in err
    assert "--overwrite" not in err  # the advice for a results folder being written does not apply to gap's inputs
    (run_dir / "pairs.csv").write_text("key,psnr\na,1\n\x00b,2\n")
    code, _, err = run(argv, capsys)
    assert code == 1 and "NUL bytes" in err


def test_binary_option_files_are_error_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """gapeval degrade --band-transform and gapeval gap --design on a binary file: exit 1 naming it, no traceback."""
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(128, 256)) * 4)
    code, _, err = run(["degrade", "--hr", str(EXAMPLES / "hr"), "--out", str(tmp_path / "lr"), "--profile", "bicubic",
                        "--band-transform", str(blob)], capsys)
    assert code == 1 and "blob: not a band transform JSON" in err
    code, _, err = run(["gap", "--design", str(blob), "--out", str(tmp_path / "g")], capsys)
    assert code == 1 and "blob: not valid YAML" in err
    for text, needle in (("runs: 5\ncomparisons: [{a: x, b: y}]\n", "'runs' must be a mapping"),
                         ("comparisons: 3\n", "'comparisons' must be a list"),
                         ("comparisons: [{a: x, b: y}]\nconditions: {x: 1}\n", "conditions of 'x' must be a mapping")):
        (tmp_path / "d.yaml").write_text(text)
        code, _, err = run(["gap", "--design", str(tmp_path / "d.yaml"), "--out", str(tmp_path / "g")], capsys)
        assert code == 1 and needle in err, err


def test_a_folder_given_as_an_image_is_called_a_folder(tmp_path: Path) -> None:
    import lpips_sat.cli

    code = lpips_sat.cli.main(["compare", str(tmp_path), str(EXAMPLES / "hr" / "town.tif")])
    assert code == 1
    with pytest.raises(InputError, match="is a folder, not an image file"):
        read_raster(tmp_path)


def test_gap_ignores_an_unreadable_summary_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from gapeval.gap import read_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "pairs.csv").write_text("key,psnr\na,1\nb,2\n")
    for content in (b"[1, 2]", b"\xff\xfe binary"):
        (run_dir / "summary.json").write_bytes(content)
        assert read_run("a", run_dir).summary == {}
        assert "summary.json: unreadable" in caplog.text


# ------------------------------------------------------------------------------------------------ temporaries


def _killed_writer(target: Path) -> Path:
    """Fork a process that starts an atomic write of ``target`` and dies before finishing; returns its temporary."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no cleanup of any kind, as after kill -9
        try:
            os.write(write_end, str(atomic_path(target)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    tmp = Path(os.read(read_end, 4096).decode())
    os.close(read_end)
    os.waitpid(pid, 0)
    return tmp


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = _killed_writer(tmp_path / "maps" / "a.tif")
    assert dead.is_file() and is_stale_temporary(dead)
    mine = atomic_path(tmp_path / "summary.json")  # this process is alive: never stale
    old_style = tmp_path / ".report.html.abcd1234.tmp"  # unknown owner: stale only when old
    old_style.write_text("x")
    other_host = tmp_path / ".pairs.csv.123@elsewhere.abcd1234.tmp"
    other_host.write_text("x")
    assert not is_stale_temporary(mine) and not is_stale_temporary(old_style) and not is_stale_temporary(other_host)
    assert remove_stale_temporaries(tmp_path) == 1 and not dead.exists() and mine.exists() and old_style.exists()
    hours_ago = time.time() - STALE_AFTER_S - 60
    for path in (old_style, other_host):
        os.utime(path, (hours_ago, hours_ago))
    assert remove_stale_temporaries(tmp_path) == 2 and mine.exists()
    mine.unlink()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_next_run_of_a_folder_removes_its_stale_temporaries(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """degrade (and infer, gap, train, pretrain, calibrate; score: tests/test_reliability.py) clean their --out."""
    out = tmp_path / "lr"
    dead = _killed_writer(out / "town.tif")
    nested = _killed_writer(out / "sub" / "fields.tif")
    hr = tmp_path / "hr"
    hr.mkdir()
    shutil.copy(EXAMPLES / "hr" / "town.tif", hr / "town.tif")
    code, _, _ = run(["degrade", "--hr", str(hr), "--out", str(out), "--profile", "bicubic"], capsys)
    assert code == 0 and not dead.exists() and not nested.exists() and (out / "town.tif").is_file()
    assert not list(out.rglob("*.tmp"))
    gap_out = tmp_path / "gap"
    stale = _killed_writer(gap_out / "gap.json")
    run(["gap", "--run", f"a={tmp_path / 'nope'}", "--run", f"b={tmp_path / 'nope'}", "--out", str(gap_out)], capsys)
    assert not stale.exists()
