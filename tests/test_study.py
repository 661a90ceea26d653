"""``gapeval study``: config validation, empty splits, the self-gap control, and the smoke study end to end with resume."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gapeval.cli import main
from lpips_sat.raster import write_raster
from gapeval.study.config import load_config
from gapeval.study.data import make_view
from gapeval.study.proxy import assign_blocks
from gapeval.study.runner import aggregate, run_study
from lpips_sat.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "examples" / "study_small.yaml"
NAIP = ROOT.parent / "shared" / "data" / "naip"


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def test_unknown_model_is_a_clear_error_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _yaml(tmp_path, "data: {pairs: nowhere}\nmodels: [{name: sr3}, {name: esrgan-x9}]\n")
    with pytest.raises(InputError, match="unknown model 'esrgan-x9'.*known: .*sr3"):
        load_config(cfg)
    out = tmp_path / "out"
    assert main(["study", "run", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "esrgan-x9" in err and "Traceback" not in err
    assert not out.exists()  # nothing started


@pytest.mark.parametrize(("text", "match"), [
    ("data: {pairs: x}\nmodels: [{name: ldsr-s2}]\n", "cannot be trained here"),
    ("data: {pairs: x}\nmodels: [sr3]\ninputs: {real: lr}\n", "'inputs' must map at least"),
    ("data: {pairs: x}\nmodels: [sr3]\ntrain: {steps: 0}\n", "train.steps must be a positive integer"),
    ("data: {pairs: x}\nmodels: [sr3]\ntrain: {stepz: 3}\n", r"unknown key\(s\) \['stepz'\]"),
    ("models: [sr3]\n", "exactly one of 'pairs'"),
    ("data: {pairs: x}\nmodels: [sr3]\ncomparisons: [{a: sr3/real/real, b: sr3/fake/real}]\n", "names run 'sr3/fake/real'"),
])
def test_config_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_config(_yaml(tmp_path, text))


def _tile(path: Path, size: int) -> None:
    write_raster(path, np.full((4, size, size), 0.1, np.float32), descriptions=("B04", "B03", "B02", "B08"))


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for split in ("train", "val", "test"):
        for f in ("hr", "lr", "lr_synth_s2"):
            (root / split / f).mkdir(parents=True)
    for split in ("train", "val"):
        _tile(root / split / "hr" / "t0.tif", 16)
        for f in ("lr", "lr_synth_s2"):
            _tile(root / split / f / "t0.tif", 4)
    _tile(root / "test" / "hr" / "t1.tif", 16)  # an HR tile without LR partners: the split is still empty
    with pytest.raises(InputError, match=r"test: empty split"):
        make_view(root, tmp_path / "view", ["lr", "lr_synth_s2"], {})


def test_blocks_cover_every_split_and_refuse_an_empty_one() -> None:
    grid = assign_blocks(4, 5, [0.6, 0.15, 0.25], seed=0)
    counts = np.bincount(grid.ravel(), minlength=3)
    assert counts.tolist() == [12, 3, 5] and grid.shape == (4, 5)
    assert not np.array_equal(grid, assign_blocks(4, 5, [0.6, 0.15, 0.25], seed=1))
    with pytest.raises(InputError, match="split 'val' gets no spatial block"):
        assign_blocks(1, 3, [0.9, 0.05, 0.05], seed=0)


def test_self_gap_covers_zero_and_a_known_shift_is_recovered(tmp_path: Path) -> None:
    """A model against itself (two halves of its samples) shows no gap; the same halves with +0.05 added to one half show it."""
    from gapeval.gap import Design, GapConfig, gap_analysis

    rng = np.random.default_rng(3)
    keys = [f"k{i:02d}" for i in range(30)]
    scene = rng.normal(0.5, 0.2, len(keys))
    preds = {f"s{k}": tmp_path / f"s{k}" for k in range(4)}
    records = []
    for s, folder in preds.items():
        for key, base in zip(keys, scene):
            write_raster(folder / f"{key}.tif", rng.random((4, 4, 4), dtype=np.float32) * 0.1, descriptions=("B04", "B03", "B02", "B08"))
            records.append({"pred_set": s, "key": key, "status": "ok", "lpips_sat": float(base + rng.normal(0, 0.05)), "pred_path": "", "target_path": ""})
    aggregate(records, preds, tmp_path / "run", "m/d/i")
    res = gap_analysis(Design({"a": tmp_path / "run" / "half_a", "b": tmp_path / "run" / "half_b"}, [("self", "b", "a")]), tmp_path / "g",
                       GapConfig(metrics=["lpips_sat", "sample_std"], images=False, n_resamples=1000), report=False)
    s = res["comparisons"][0]["metrics"]["lpips_sat"]
    assert s["ci_low"] <= 0 <= s["ci_high"] and not s["significant"]
    assert res["comparisons"][0]["metrics"]["sample_std"]["gap"] == 0  # one std per scene, shared by both halves
    full = np.genfromtxt(tmp_path / "run" / "pairs.csv", delimiter=",", names=True, dtype=None, encoding=None)
    per_key = {k: np.mean([r["lpips_sat"] for r in records if r["key"] == k]) for k in keys}
    assert np.allclose([per_key[k] for k in full["key"]], full["lpips_sat"], atol=1e-7)
    for r in records:
        if r["pred_set"] in ("s2", "s3"):
            r["lpips_sat"] += 0.05
    aggregate(records, preds, tmp_path / "run2", "m/d/i")
    res = gap_analysis(Design({"a": tmp_path / "run2" / "half_a", "b": tmp_path / "run2" / "half_b"}, [("shift", "b", "a")]), tmp_path / "g2",
                       GapConfig(metrics=["lpips_sat"], images=False, n_resamples=1000), report=False)
    s = res["comparisons"][0]["metrics"]["lpips_sat"]
    assert s["ci_low"] > 0 and s["ci_low"] <= 0.05 <= s["ci_high"] and s["significant"]


class _Interrupt:
    """Raise KeyboardInterrupt once at each (stage, unit) of ``at``."""

    def __init__(self, at: set[tuple[str, int]]) -> None:
        self.at = set(at)

    def __call__(self, stage: str, done: int) -> None:
        if (stage, done) in self.at:
            self.at.discard((stage, done))
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.skipif(not NAIP.is_dir(), reason="needs ../shared/data/naip")
def test_smoke_study_resumes_after_interruptions_with_identical_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(SMALL, smoke=True)
    straight = run_study(cfg, tmp_path / "a", stream=io.StringIO())
    # the same study, interrupted mid-training (after a saved state) and mid-inference, then resumed
    hook = _Interrupt({("train resshift on real", 3), ("infer sr3/real/real", 3)})
    logs = [io.StringIO() for _ in range(3)]
    for log in logs[:2]:
        with pytest.raises(KeyboardInterrupt):
            run_study(cfg, tmp_path / "b", stream=log, hook=hook)
    resumed = run_study(cfg, tmp_path / "b", stream=logs[2], hook=hook)
    assert "[train sr3 on synthetic] finished earlier (cached)" in logs[1].getvalue()
    assert "[train resshift on real] start: 4 steps (2 done earlier)" in logs[1].getvalue()  # resumed from the state saved at step 2
    assert "[infer sr3/real/synthetic] finished earlier (cached)" in logs[2].getvalue()
    assert resumed == straight
    # nothing is recomputed on a finished study
    log = io.StringIO()
    assert run_study(cfg, tmp_path / "b", stream=log) == straight
    assert "start:" not in log.getvalue()
    # what the report holds
    tables = straight
    runs = cfg.run_names()
    assert set(tables["cells"]) == set(runs) and len(runs) == 10  # 2 trained models x 2 domains x 2 inputs + bicubic x 2 inputs
    assert all(np.isfinite(tables["cells"][r]["lpips_sat"]["mean"]) for r in runs)
    assert {g["name"].split(":")[0] for g in tables["gaps"]} == {"synthetic-to-real gap", "training-domain gap"} and len(tables["gaps"]) == 7
    bic = [g for g in tables["gaps"] if g["a"] == "bicubic/pretrained/real"][0]["metrics"]["psnr"]
    assert bic["ci_low"] <= bic["gap"] <= bic["ci_high"]
    assert len(tables["controls"]) == 8 and set(tables["convergence"]) == {"sr3/synthetic", "sr3/real", "resshift/synthetic", "resshift/real"}
    md = (tmp_path / "a" / "report.md").read_text()
    assert "aerial-to-aerial proxy" in md and "Smoke run" in md and (tmp_path / "a" / "figures" / "training_resshift.png").is_file()
    val = (tmp_path / "a" / "train" / "sr3" / "real" / "val_log.csv").read_text().splitlines()
    assert val[0] == "step,val_lpips_sat,val_psnr" and [r.split(",")[0] for r in val[1:]] == ["0", "2", "4"]
    # a config error on a finished study keeps every finished stage
    stamps = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("stage.json"))
    bad = tmp_path / "bad.yaml"
    shutil.copy(SMALL, bad)
    bad.write_text(SMALL.read_text().replace("- name: resshift", "- name: resshiftt").replace("../../shared", str(ROOT.parent / "shared")))
    capsys.readouterr()
    assert main(["study", "run", str(bad), "--smoke", "--out", str(tmp_path / "b")]) == 1
    assert "unknown model 'resshiftt'" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("stage.json")) == stamps
    assert json.loads((tmp_path / "b" / "tables.json").read_text()) == straight


@pytest.mark.parametrize("shard", ["3/3", "-1/2", "1/0", "a/b"])
def test_a_bad_shard_is_a_usage_error_at_parse_time(shard: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Like ``gapeval infer --shard``: checked by argparse (exit 2), before the study file is even read."""
    with pytest.raises(SystemExit) as exc:
        main(["study", "run", "does-not-exist.yaml", "--shard", shard])
    assert exc.value.code == 2
    assert "--shard" in capsys.readouterr().err and "does not exist" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not NAIP.is_dir(), reason="needs ../shared/data/naip")
def test_shards_split_the_training_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Several GPUs: one process per shard trains every n-th (model, domain); a later run finds them finished."""
    out = tmp_path / "s"
    base = ["study", "run", str(SMALL), "--smoke", "--out", str(out)]
    assert main([*base, "--shard", "0/2", "--stop-after", "train"]) == 1
    assert "pairs stage is not finished" in capsys.readouterr().err
    assert main([*base, "--shard", "0/2"]) == 1 and "--stop-after train" in capsys.readouterr().err
    assert main([*base, "--stop-after", "data"]) == 0
    capsys.readouterr()
    logs = []
    for k in range(2):
        assert main([*base, "--shard", f"{k}/2", "--stop-after", "train"]) == 0
        logs.append(capsys.readouterr().err)
    started = [sorted(line.split("]")[0][1:] for line in log.splitlines() if "start:" in line) for log in logs]
    assert started == [["train resshift on synthetic", "train sr3 on synthetic"], ["train resshift on real", "train sr3 on real"]]
    assert main([*base, "--stop-after", "train"]) == 0
    assert "start:" not in capsys.readouterr().err
