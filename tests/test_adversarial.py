"""Property-based fuzzing of ``gapeval score`` (hypothesis): folders of small real GeoTIFFs with one random defect each.

The invariant (docs/reliability.md): a clear error (an ``LPIPSSatError`` naming the file), or the correct numbers,
never a traceback and never a silently different number. "Correct" is checked against independent expectations:
defects that must not change a number (odd file names, symlinked folders, described band permutations, values under
the target's nodata, sub-pixel offsets, a missing CRS with the same transform) must reproduce the clean run exactly;
defects that would change a number silently (NaN patches, undeclared band orders) must fail the pair or be recorded;
the rest (grid offsets, truncated files, digital numbers without a scale) must be errors. A resumed run must return
the same rows once. Bounded: a few dozen examples, each a 64 x 64 px scene with a tiny random network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gapeval.score import score
from lpips_sat import LPIPSSat
from lpips_sat.errors import LPIPSSatError
from lpips_sat.raster import read_raster, write_raster

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BANDS = ("B04", "B03", "B02", "B08")
METRIC = LPIPSSat.random()
COMPARED = ("lpips_sat", "psnr", "ssim", "sam_deg", "rmse", "mae", "valid_fraction")


def _base() -> tuple[np.ndarray, object]:
    r = read_raster(EXAMPLES / "hr" / "town.tif")
    return (r.data / 10000.0).astype(np.float32), r


TARGET, LIKE = _base()
PRED = (TARGET * 0.97 + 0.002).astype(np.float32)


def put(path: Path, data: np.ndarray, **kw) -> Path:
    args = dict(transform=LIKE.transform, crs=LIKE.crs, dtype=str(data.dtype), descriptions=BANDS)
    args.update(kw)
    return write_raster(path, data, **args)


def run(root: Path, **kw) -> dict:
    res = score({"p": root / "pred"}, root / "hr", metric=METRIC, out=root / "out", **kw)
    again = score({"p": root / "pred"}, root / "hr", metric=METRIC, out=root / "out", resume=True, **kw)
    assert [(r["key"], r["status"]) for r in again.records] == [(r["key"], r["status"]) for r in res.records]  # once, same
    for a, b in zip(res.records, again.records):
        assert all(a[c] == b[c] or (np.isnan(a[c]) and np.isnan(b[c])) for c in COMPARED)
    return {"records": res.records, "summary": res.summary}


def clean_numbers(target: np.ndarray = TARGET, pred: np.ndarray = PRED, nodata: float | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        put(root / "hr" / "s.tif", target, nodata=nodata)
        put(root / "pred" / "s.tif", pred)
        return run(root)["records"][0]


CLEAN = clean_numbers()


def same_numbers(rec: dict, ref: dict = CLEAN) -> None:
    assert rec["status"] == "ok", rec["reason"]
    for c in COMPARED:
        assert rec[c] == pytest.approx(ref[c], rel=1e-6, abs=1e-9), c


DEFECTS = st.one_of(
    st.tuples(st.just("none")),
    st.tuples(st.just("odd_name"), st.sampled_from(["a\nb", "c\u2028d", "sp ace", "ünï", "x,y", 'q"q', "-dash", "tab\tname"])),
    st.tuples(st.just("symlinked_folder"), st.booleans()),
    st.tuples(st.just("described_permutation"), st.permutations(range(4))),
    st.tuples(st.just("undeclared_permutation"), st.permutations(range(4))),
    st.tuples(st.just("nan_patch"), st.integers(0, 60), st.integers(0, 60), st.integers(1, 8), st.sampled_from([np.nan, np.inf, -np.inf])),
    st.tuples(st.just("nodata_under_target_nodata"), st.integers(1, 30), st.floats(-0.4, 1.4)),
    st.tuples(st.just("grid_offset"), st.integers(-5, 5).filter(bool), st.integers(-5, 5)),
    st.tuples(st.just("subpixel_offset"), st.floats(-0.45, 0.45), st.floats(-0.45, 0.45)),
    st.tuples(st.just("missing_crs"), st.integers(-3, 3)),
    st.tuples(st.just("truncated"), st.floats(0.05, 0.95)),
    st.tuples(st.just("digital_numbers"), st.booleans()),
    st.tuples(st.just("cropped"), st.integers(1, 31)),
    st.tuples(st.just("extra_band"), st.integers(0, 4)),
    st.tuples(st.just("pred_nodata_patch"), st.integers(0, 60), st.integers(1, 8)),
    st.tuples(st.just("same_stem"), st.sampled_from([".tiff", ".npy", ".TIF"])),
)


#: CI runs a fixed, bounded sample; set GAPEVAL_FUZZ_EXAMPLES (e.g. 1000) to hunt for new failures with fresh draws.
FUZZ_EXAMPLES = int(os.environ.get("GAPEVAL_FUZZ_EXAMPLES", "0"))


@settings(
    max_examples=FUZZ_EXAMPLES or 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not FUZZ_EXAMPLES,
    database=None,
)
@given(defect=DEFECTS)
def test_a_clear_error_or_the_correct_numbers(defect):
    kind, *args = defect
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        name, must_fail = "s", False
        target_nodata, target = None, TARGET
        pred_path = lambda n="s": root / "pred" / f"{n}.tif"  # noqa: E731
        if kind == "none":
            put(pred_path(), PRED)
        elif kind == "odd_name":
            name = args[0]
            put(pred_path(name), PRED)
        elif kind == "symlinked_folder":
            real = root / "elsewhere" / "deep"
            put(real / "s.tif", PRED)
            (root / "pred").mkdir()
            os.symlink(real, root / "pred" / "sub")
            if args[0]:
                os.symlink("..", real / "loop")  # a loop must not hang or duplicate
            name = "sub/s"
        elif kind == "described_permutation":
            order = list(args[0])
            put(pred_path(), PRED[order], descriptions=tuple(BANDS[i] for i in order))
        elif kind == "undeclared_permutation":
            order = list(args[0])
            put(pred_path(), PRED[order], descriptions=None)
        elif kind == "nan_patch":
            r0, c0, size, value = args
            bad = PRED.copy()
            bad[:, r0 : r0 + size, c0 : c0 + size] = value
            put(pred_path(), bad)
            must_fail = True
        elif kind == "nodata_under_target_nodata":
            rows, junk = args
            target = TARGET.copy()
            target[:, :rows] = -1.0
            target_nodata = -1.0
            garbage = PRED.copy()
            garbage[:, :rows] = junk  # anything under the target's nodata must not matter
            put(pred_path(), garbage)
        elif kind in ("grid_offset", "subpixel_offset"):
            put(pred_path(), PRED, transform=LIKE.transform @ Affine.translation(*args))
        elif kind == "missing_crs":
            put(pred_path(), PRED, crs=None, transform=LIKE.transform @ Affine.translation(args[0], 0))
        elif kind == "truncated":
            path = put(pred_path(), PRED)
            data = path.read_bytes()
            path.write_bytes(data[: max(8, int(len(data) * args[0]))])
        elif kind == "digital_numbers":
            dn = np.rint(PRED * 10000).astype(np.uint16)
            put(pred_path(), dn, dtype="uint16", scales=[1e-4] * 4 if args[0] else None)
        elif kind == "cropped":
            put(pred_path(), PRED[:, args[0] :])
        elif kind == "extra_band":  # a fifth band (B05) somewhere: the described bands are selected by name
            order = list(BANDS)
            order.insert(args[0], "B05")
            put(pred_path(), np.insert(PRED, args[0], PRED[0] * 0.5, axis=0), descriptions=tuple(order))
        elif kind == "pred_nodata_patch":
            r0, size = args
            bad = PRED.copy()
            bad[:, r0 : r0 + size, r0 : r0 + size] = -1.0
            put(pred_path(), bad, nodata=-1.0)
            must_fail = True
        elif kind == "same_stem":
            put(pred_path(), PRED)
            twin = root / "pred" / f"s{args[0]}"
            np.save(twin, PRED) if args[0] == ".npy" else put(twin, PRED)
        put(root / "hr" / f"{name}.tif", target, nodata=target_nodata)

        try:
            out = run(root)
        except LPIPSSatError as exc:  # a clear error: it names a file and says what is wrong
            message = str(exc)
            assert ".tif" in message or "--" in message, message
            assert kind in ("grid_offset", "missing_crs", "truncated", "digital_numbers", "cropped", "same_stem"), f"{kind}: unexpected error {message}"
            if kind == "missing_crs":
                assert args[0] != 0, message
            if kind == "digital_numbers":
                assert not args[0], message  # with its scale metadata the file is fine
            return
        records = out["records"]
        assert [r["key"] for r in records] == [name]
        rec = records[0]
        assumed = out["summary"]["inputs"]["assumed_band_order"]
        if must_fail:
            assert rec["status"] == "failed" and "NaN/inf/nodata" in rec["reason"]
        elif kind == "undeclared_permutation":
            if list(args[0]) == [0, 1, 2, 3]:
                same_numbers(rec)
            assert assumed["pred"]["files"] == [str(pred_path())]  # a different number, but never silently
        elif kind == "nodata_under_target_nodata":
            same_numbers(rec, clean_numbers(target, PRED, target_nodata))
        elif kind == "digital_numbers":  # DN with scale metadata: the numbers of the same values as float reflectance
            dn = np.rint(PRED * 10000).astype(np.uint16)
            same_numbers(rec, clean_numbers(pred=dn.astype(np.float32) * np.float32(1e-4) + np.float32(0)))
            assert not assumed
        elif kind in ("grid_offset", "cropped", "same_stem") or (kind == "missing_crs" and args[0] != 0):
            raise AssertionError(f"{kind} {args}: scored although the files do not pair or do not share a grid")
        else:
            same_numbers(rec)
            assert not assumed


# ------------------------------------------------------------------------------------------------ the LR input

LR_RASTER = read_raster(EXAMPLES / "lr" / "town.tif")
LR = (LR_RASTER.data / 10000.0).astype(np.float32)
LR_COMPARED = COMPARED + ("refl_l1", "spectral_sam_deg", "shift_px", "improvement", "omission", "hallucination")


def run_with_lr(root: Path, lr: np.ndarray, **kw) -> dict:
    put(root / "hr" / "s.tif", TARGET)
    put(root / "pred" / "s.tif", PRED)
    args = dict(transform=LR_RASTER.transform, crs=LR_RASTER.crs, dtype="float32", descriptions=BANDS)
    args.update(kw)
    write_raster(root / "lr" / "s.tif", lr, **args)
    res = score({"p": root / "pred"}, root / "hr", lr=root / "lr", metric=METRIC)
    return {"records": res.records, "summary": res.summary}


with tempfile.TemporaryDirectory() as _tmp:
    CLEAN_LR = run_with_lr(Path(_tmp), LR)["records"][0]

LR_DEFECTS = st.one_of(
    st.tuples(st.just("described_permutation"), st.permutations(range(4))),
    st.tuples(st.just("undeclared_permutation"), st.permutations(range(4))),
    st.tuples(st.just("offset"), st.floats(-3, 3), st.floats(-3, 3)),
    st.tuples(st.just("not_coarser"), st.just(0)),
)


@settings(max_examples=FUZZ_EXAMPLES or 12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=not FUZZ_EXAMPLES, database=None)
@given(defect=LR_DEFECTS)
def test_lr_defects_a_clear_error_or_the_correct_numbers(defect):
    kind, *args = defect
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            if kind == "described_permutation":
                order = list(args[0])
                out = run_with_lr(root, LR[order], descriptions=tuple(BANDS[i] for i in order))
            elif kind == "undeclared_permutation":
                out = run_with_lr(root, LR[list(args[0])], descriptions=None)
            elif kind == "offset":  # in LR pixels (40 m); up to half an LR pixel is accepted as the same extent
                out = run_with_lr(root, LR, transform=LR_RASTER.transform @ Affine.translation(*args))
            else:  # an "LR" at the target's resolution
                out = run_with_lr(root, TARGET, transform=LIKE.transform)
        except LPIPSSatError as exc:
            message = str(exc)
            assert "lr/s.tif" in message, message
            assert kind == "not_coarser" or (kind == "offset" and max(abs(args[0]), abs(args[1])) > 0.5 - 1e-9), message
            return
        rec = out["records"][0]
        assumed = out["summary"]["inputs"]["assumed_band_order"]
        assert kind != "not_coarser", "an LR as fine as the target was accepted"
        if kind == "undeclared_permutation":
            assert assumed["lr"]["files"] == [str(root / "lr" / "s.tif")]
            return
        assert kind != "offset" or max(abs(args[0]), abs(args[1])) <= 0.5 + 1e-9, f"LR offset {args} accepted"
        assert not assumed
        if kind == "described_permutation":
            for c in LR_COMPARED:
                assert rec[c] == pytest.approx(CLEAN_LR[c], rel=1e-6, abs=1e-9), c
