"""gapeval score --shard K/N and gapeval merge: a deterministic split by key hash, merged results equal to an unsharded
run, refusals for shards that do not belong together, and torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gapeval import cli
from gapeval.folders import Pairing
from gapeval.score import score
from gapeval.shards import distributed_env, merge_results, parse_shard, select_shard, shard_dir, shard_of
from lpips_sat import LPIPSSat
from lpips_sat.errors import InputError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCENES = ("barrier_beach", "fields", "town", "village_woods")
SETS = ("bicubic", "noisy")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four example scenes, two prediction sets; ``noisy`` lacks one scene (so there are unpaired files)."""
    root = tmp_path_factory.mktemp("shards")
    for sub in ("hr", "lr", *(f"pred/{s}" for s in SETS)):
        (root / sub).mkdir(parents=True)
        for name in SCENES:
            if not (sub == "pred/noisy" and name == "town"):
                shutil.copy(EXAMPLES / sub / f"{name}.tif", root / sub / f"{name}.tif")
    return root


def run_score(data: Path, out: Path, **kw):
    return score({s: data / "pred" / s for s in SETS}, data / "hr", lr=data / "lr", out=out, metric=kw.pop("metric", "random-tiny"),
                 device="cpu", allow_missing=True, **kw)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {"full": base / "full"}
    run_score(data, out["full"])
    for k in (1, 2, 3):
        out[f"s{k}"] = base / f"s{k}"
        run_score(data, out[f"s{k}"], shard=(k, 3))
    return out


def rows_without_timing(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


# ---------------------------------------------------------------------------------------------- the split
def test_shard_of_is_the_documented_hash_and_balanced() -> None:
    for key in ("town", "a/b/scene_0001", "ünïcode"):
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        assert shard_of(key, 7) == int(digest[:16], 16) % 7 + 1
    counts = [0] * 4
    for i in range(8000):
        counts[shard_of(f"scene_{i:05d}", 4) - 1] += 1
    assert all(abs(c - 2000) < 180 for c in counts), counts  # binomial sd ~39


def test_select_shard_is_stable_when_files_are_added() -> None:
    def pairing(keys):
        return Pairing(targets={k: Path(f"hr/{k}.tif") for k in keys}, preds={"a": {k: Path(f"a/{k}.tif") for k in keys}}, lr=None,
                       unpaired={"targets without prediction in b": list(keys)})

    small, large = [f"s{i}" for i in range(50)], [f"s{i}" for i in range(80)]
    parts_small = [set(select_shard(pairing(small), k, 3).keys) for k in (1, 2, 3)]
    parts_large = [set(select_shard(pairing(large), k, 3).keys) for k in (1, 2, 3)]
    assert set().union(*parts_small) == set(small) and sum(map(len, parts_small)) == len(small)  # a partition
    assert all(ps <= pl for ps, pl in zip(parts_small, parts_large))  # nothing moved
    assert select_shard(pairing(small), 2, 3).unpaired["targets without prediction in b"] == sorted(parts_small[1], key=small.index)


def test_shard_argument_is_a_usage_error(capsys) -> None:
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/3", "4/3", "a/b", "3", "1/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)
    with pytest.raises(SystemExit) as exc:
        cli.main(["score", "--pred", "x", "--target", "y", "--out", "z", "--shard", "4/3"])
    assert exc.value.code == 2 and "K/N" in capsys.readouterr().err


def test_distributed_env() -> None:
    assert distributed_env({}) is None and distributed_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert distributed_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(InputError, match="RANK"):
        distributed_env({"WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="outside"):
        distributed_env({"WORLD_SIZE": "2", "RANK": "2"})


# ---------------------------------------------------------------------------------------------- merging
def test_merged_shards_equal_the_unsharded_run(runs, tmp_path) -> None:
    shard_keys = [{r["key"] for r in rows_without_timing(runs[f"s{k}"] / "pairs.csv")} for k in (1, 2, 3)]
    assert sum(map(len, shard_keys)) == len(SCENES) and set().union(*shard_keys) == set(SCENES)
    merged = merge_results([runs["s3"], runs["s1"], runs["s2"]], tmp_path / "merged")  # order of the folders does not matter
    full = json.loads((runs["full"] / "summary.json").read_text())
    on_disk = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert rows_without_timing(tmp_path / "merged" / "pairs.csv") == rows_without_timing(runs["full"] / "pairs.csv")
    for key in ("pred_sets", "skipped", "unpaired", "lr_invalid", "config", "config_hash", "weights", "inputs", "columns"):
        assert on_disk[key] == full[key], key
    assert full["unpaired"] and merged["shards"] == {"count": 3, "merged": {str(k): str(runs[f"s{k}"]) for k in (1, 2, 3)}, "missing": []}
    assert "shard" not in on_disk and json.loads((runs["s2"] / "summary.json").read_text())["shard"] == {"index": 2, "count": 3}


def test_merge_refuses_shards_that_do_not_belong_together(data, runs, tmp_path, capsys) -> None:
    s1, s2, s3 = runs["s1"], runs["s2"], runs["s3"]
    with pytest.raises(InputError, match="not given"):
        merge_results([s1, s3], tmp_path / "m1")
    with pytest.raises(InputError, match="both shard 2/3"):
        merge_results([s1, s2, s2], tmp_path / "m2")
    with pytest.raises(InputError, match="not a shard"):
        merge_results([s1, runs["full"], s3], tmp_path / "m3")
    other_tile = tmp_path / "tile"
    run_score(data, other_tile, shard=(2, 3), tile=128)
    with pytest.raises(InputError, match="another configuration.*tile: 128 vs"):
        merge_results([s1, other_tile, s3], tmp_path / "m4")
    other_weights = tmp_path / "weights"
    run_score(data, other_weights, shard=(2, 3), metric=LPIPSSat.random(seed=1))
    with pytest.raises(InputError, match="other weights"):
        merge_results([s1, other_weights, s3], tmp_path / "m5")
    four = tmp_path / "four"
    run_score(data, four, shard=(2, 4))
    with pytest.raises(InputError, match="split into 3"):
        merge_results([s1, four, s3], tmp_path / "m6")
    merge_results([s1, s2, s3], tmp_path / "m7")
    with pytest.raises(InputError, match="already exists"):
        merge_results([s1, s2, s3], tmp_path / "m7")
    # the command line: a missing shard is a data error, or with --allow-partial a partial result (exit 3)
    assert cli.main(["merge", str(s1), str(s3), "--out", str(tmp_path / "m8")]) == 1
    assert "error:" in capsys.readouterr().err
    assert cli.main(["merge", str(s1), str(s3), "--out", str(tmp_path / "m8"), "--allow-partial"]) == 3
    assert "partial: shard(s) 2 of 3 missing" in capsys.readouterr().out
    assert json.loads((tmp_path / "m8" / "summary.json").read_text())["shards"]["missing"] == [2]


def test_shard_resumes_on_its_own(data, runs, tmp_path) -> None:
    part = tmp_path / "s1"
    shutil.copytree(runs["s1"], part)
    lines = (part / "pairs.csv").read_text().splitlines(keepends=True)
    (part / "pairs.csv").write_text("".join(lines[:-1]))  # an interrupted shard: its last row is missing
    result = run_score(data, part, shard=(1, 3), resume=True)
    assert len(result.records) == len(lines) - 1
    assert rows_without_timing(part / "pairs.csv") == rows_without_timing(runs["s1"] / "pairs.csv")


# ---------------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_two_cpu_ranks_shard_and_rank0_merges(data, runs, tmp_path) -> None:
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "gapeval.cli", "score",
           *(a for s in SETS for a in ("--pred", str(data / "pred" / s))), "--target", str(data / "hr"), "--lr", str(data / "lr"),
           "--out", str(out), "--weights", "random-tiny", "--device", "cpu", "--allow-missing", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (1, 2):
        assert json.loads((shard_dir(out, k, 2) / "summary.json").read_text())["shard"] == {"index": k, "count": 2}
    assert rows_without_timing(out / "pairs.csv") == rows_without_timing(runs["full"] / "pairs.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pred_sets"] == json.loads((runs["full"] / "summary.json").read_text())["pred_sets"]
    assert summary["shards"]["count"] == 2 and "rank 1: shard 2/2" in proc.stdout and "bicubic" in proc.stdout


def test_merge_gathers_the_shards_maps(data, tmp_path) -> None:
    parts = []
    for k in (1, 2):
        parts.append(tmp_path / f"m{k}")
        score({"bicubic": data / "pred" / "bicubic"}, data / "hr", out=parts[-1], metric="random-tiny", device="cpu", maps=True, shard=(k, 2))
    merge_results(parts, tmp_path / "merged")
    maps = sorted(p.relative_to(tmp_path / "merged" / "maps").as_posix() for p in (tmp_path / "merged" / "maps").rglob("*.tif"))
    assert maps == [f"bicubic/{name}.tif" for name in sorted(SCENES)]
    for p in (tmp_path / "merged" / "maps").rglob("*.tif"):
        k = shard_of(p.stem, 2)
        assert p.read_bytes() == (parts[k - 1] / "maps" / "bicubic" / p.name).read_bytes()
