"""``gapeval.metrics.compute`` (arrays in memory) is ``gapeval score``'s per-scene code: the same columns and numbers as
``pairs.csv``; and ``--protocol opensr-test`` through ``gapeval score`` gives opensr-test's own numbers.

compute() places arrays on the placeholder grid of non-georeferenced files while the examples are georeferenced GeoTIFFs,
so equal LR-consistency columns also check that grid (it once made them all NaN)."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import gapeval
from gapeval import cli
from gapeval.metrics import compute
from gapeval.metrics.opensr import COLUMNS, TILES_COLUMN, opensr_test_metrics
from lpips_sat.errors import InputError

rasterio = pytest.importorskip("rasterio")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KEYS = sorted(p.stem for p in (EXAMPLES / "hr").glob("*.tif"))
#: Columns that name or time the inputs rather than measure them.
BOOKKEEPING = {"key", "seconds", "config_hash", "pred_path", "target_path", "lr_path", "pred_sha256", "target_sha256", "lr_sha256"}


def _read(path: Path) -> np.ndarray:
    """Reflectance as ``gapeval score`` computes it from the examples' uint16 DN and 1e-4 band scale."""
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32) * np.float32(ds.scales[0]) + np.float32(0.0)


def _same_row(mine: dict, ref: dict, what: str) -> None:
    assert set(mine) == set(ref)
    for col, value in ref.items():
        if col in BOOKKEEPING:
            continue
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(mine[col], float) and math.isnan(mine[col]), f"{what} {col}"
        elif isinstance(value, float):
            assert mine[col] == pytest.approx(value, rel=1e-7, abs=1e-12), f"{what} {col}"  # pairs.csv keeps 10 digits
        else:
            assert mine[col] == value, f"{what} {col}"


@pytest.mark.parametrize("protocol", ["gapeval", "opensr-test"])
def test_compute_equals_score_rows(protocol: str) -> None:
    res = gapeval.score({"sharpened": EXAMPLES / "pred" / "sharpened"}, EXAMPLES / "hr", lr=EXAMPLES / "lr", metric="random-tiny", protocol=protocol)
    rows = {r["key"]: r for r in res.records}
    hr = np.stack([_read(EXAMPLES / "hr" / f"{k}.tif") for k in KEYS])
    lr = np.stack([_read(EXAMPLES / "lr" / f"{k}.tif") for k in KEYS])
    sr = np.stack([_read(EXAMPLES / "pred" / "sharpened" / f"{k}.tif") for k in KEYS])
    batch = compute(torch.from_numpy(sr), torch.from_numpy(hr), torch.from_numpy(lr), metric="random-tiny", protocol=protocol)
    assert len(batch) == len(KEYS)
    for i, key in enumerate(KEYS):
        _same_row({**batch[i], "pred_set": "sharpened"}, rows[key], key)
    one = compute(sr[2], hr[2], lr[2], metric="random-tiny", protocol=protocol)  # (C, H, W) numpy: one dict
    assert one["key"] == "0" and one["pred_path"] == "<sr>" and one["lr_path"] == "<lr>"
    _same_row({**one, "pred_set": "sharpened"}, rows[KEYS[2]], KEYS[2])
    if protocol == "opensr-test":
        assert not {"refl_l1", "improvement", "shift_px"} & set(one)
        ref = opensr_test_metrics(lr[2], sr[2], hr[2])
        assert {c: one[c] for c in COLUMNS.values()} == pytest.approx({c: ref[k] for k, c in COLUMNS.items()}, rel=1e-6)
    else:
        assert not set(COLUMNS.values()) & set(one) and one["refl_l1"] > 0


def test_score_opensr_protocol_matches_the_opensr_test_package(tmp_path: Path) -> None:
    opensr_test = pytest.importorskip("opensr_test")
    state = torch.random.get_rng_state(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    out = tmp_path / "res"
    code = cli.main(["score", "--pred", str(EXAMPLES / "pred" / "noisy"), "--target", str(EXAMPLES / "hr"), "--lr", str(EXAMPLES / "lr"),
                     "--out", str(out), "--weights", "random-tiny", "--protocol", "opensr-test", "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "opensr-test" and summary["config"]["protocol"] == "opensr-test"
    with (out / "pairs.csv").open(newline="") as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    metrics = opensr_test.Metrics()
    try:
        for key in KEYS:
            lr, sr, hr = (torch.from_numpy(_read(EXAMPLES / d / f"{key}.tif")) for d in ("lr", "pred/noisy", "hr"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # satalign warns when its translation estimate is too large
                ref = metrics.compute(lr, sr, hr)
            for name, col in COLUMNS.items():
                assert float(rows[key][col]) == pytest.approx(ref[name], rel=1e-4), f"{key} {col}"
            assert float(rows[key][TILES_COLUMN]) == 1
    finally:
        torch.random.set_rng_state(state[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = state[1], state[2]


def test_windows_of_a_large_image_and_the_protocol_errors(tmp_path: Path) -> None:
    """Several --tile windows: each is one opensr-test triplet, averaged by the pixels inside their border masks."""
    hr = np.concatenate([_read(EXAMPLES / "hr" / f"{k}.tif") for k in KEYS[:3]], axis=2)[:, :, :160]  # 64 x 160 px
    lr = hr.reshape(4, 16, 4, 40, 4).mean(axis=(2, 4))
    sr = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], scale_factor=4, mode="bicubic")[0].numpy()
    row = compute(sr, hr, lr, metric="random-tiny", protocol="opensr-test", tile=64)
    parts = [opensr_test_metrics(lr[:, :, c // 4:(c + 64) // 4], sr[:, :, c:c + 64], hr[:, :, c:c + 64]) for c in (0, 64)]
    weights = [32 * 32, 32 * 32]  # the third window (32 px wide) is too small for the 16 px border and left out
    assert row[TILES_COLUMN] == 2
    for name, col in COLUMNS.items():
        expected = sum(p[name] * w for p, w in zip(parts[:2], weights)) / sum(weights)
        assert row[col] == pytest.approx(expected, rel=1e-6), col
    with pytest.raises(InputError, match="needs the LR"):
        compute(sr, hr, metric="random-tiny", protocol="opensr-test")
    with pytest.raises(InputError, match="integer LR/HR pixel-size ratio"):
        compute(sr[:, :48, :48], hr[:, :48, :48], lr[:, :16, :16], metric="random-tiny", protocol="opensr-test")  # x3
    lr16 = hr[:, :, :64].reshape(4, 4, 16, 4, 16).mean(axis=(2, 4))  # x16: windows of 40 px would split LR pixels
    with pytest.raises(InputError, match="multiple of 16"):
        compute(sr[:, :, :64], hr[:, :, :64], lr16, metric="random-tiny", protocol="opensr-test", tile=40)
    with pytest.raises(InputError, match="protocol must be one of"):
        compute(sr, hr, lr, metric="random-tiny", protocol="opensr")


def test_compute_bad_inputs_name_the_array() -> None:
    hr = _read(EXAMPLES / "hr" / f"{KEYS[0]}.tif")
    with pytest.raises(InputError, match="one shape"):
        compute(hr[:, :32], hr, metric="random-tiny")
    with pytest.raises(InputError, match=r"<sr>: values up to .* the array divided by 10000"):
        compute(hr * 10000, hr, metric="random-tiny")
    with pytest.raises(InputError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        compute(hr[0], hr[0], metric="random-tiny")
    with pytest.raises(InputError, match="bands"):
        compute(hr[:3], hr[:3], metric="random-tiny")


def test_cli_protocol_needs_lr(tmp_path: Path, capsys) -> None:
    code = cli.main(["score", "--pred", str(EXAMPLES / "pred" / "noisy"), "--target", str(EXAMPLES / "hr"), "--out", str(tmp_path),
                     "--weights", "random-tiny", "--protocol", "opensr-test"])
    assert code == 2 and "needs --lr" in capsys.readouterr().err


def test_resuming_with_another_protocol_is_refused(tmp_path: Path) -> None:
    kw = dict(lr=EXAMPLES / "lr", out=tmp_path, metric="random-tiny", pattern=f"{KEYS[0]}*")
    first = gapeval.score(EXAMPLES / "pred" / "noisy", EXAMPLES / "hr", **kw)
    assert first.summary["protocol"] == "gapeval"
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["protocol"] == "gapeval"
    with pytest.raises(InputError, match="another --protocol"):
        gapeval.score(EXAMPLES / "pred" / "noisy", EXAMPLES / "hr", resume=True, protocol="opensr-test", **kw)


def test_compute_with_alignment_equals_score() -> None:
    """--align shift --harmonize linear through compute() and through gapeval score: the same rows (align_*/harm_*
    corrections included), and the 2 px shift of the `shifted` example is what gets undone."""
    kw = dict(metric="random-tiny", align="shift", harmonize="linear")
    res = gapeval.score({"shifted": EXAMPLES / "pred" / "shifted"}, EXAMPLES / "hr", lr=EXAMPLES / "lr", pattern="t*", **kw)
    assert res.records and all(r["status"] == "ok" for r in res.records)
    for ref in res.records:
        sr, hr, lr = (_read(EXAMPLES / d / f"{ref['key']}.tif") for d in ("pred/shifted", "hr", "lr"))
        row = compute(sr, hr, lr, **kw)
        _same_row({**row, "pred_set": "shifted"}, ref, ref["key"])
        assert (row["align_dy"], row["align_dx"]) == pytest.approx((-2.0, -2.0), abs=0.3)  # target content 2 px up-left of SR
