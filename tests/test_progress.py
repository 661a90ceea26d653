"""Long jobs are never silent: gapeval score prints a line per stage (stderr) around its progress bar."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import torch

from gapeval.progress import Stages
from gapeval.score import score

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_stages_lines_and_switch() -> None:
    buf = io.StringIO()
    st = Stages("job", 2, stream=buf)
    st("first")
    st("second")
    st.done()
    lines = buf.getvalue().splitlines()
    assert re.fullmatch(r"job \[1/2 00:00\] first", lines[0]) and lines[1].startswith("job [2/2 ") and re.fullmatch(r"job: done in \d+\.\d s", lines[2])
    quiet = io.StringIO()
    Stages("job", 1, enabled=False, stream=quiet)("x")
    assert quiet.getvalue() == ""


def test_score_announces_each_stage(tmp_path, capsys) -> None:
    for sub in ("hr", "pred/a"):
        (tmp_path / sub).mkdir(parents=True)
        shutil.copy(EXAMPLES / sub.replace("pred/a", "pred/bicubic") / "fields.tif", tmp_path / sub / "fields.tif")
    score({"a": tmp_path / "pred" / "a"}, tmp_path / "hr", out=tmp_path / "out", metric="random-tiny", device="cpu", report=True, progress=True)
    err = capsys.readouterr().err
    order = ["[1/4", "loading LPIPS-Sat weights random-tiny", "[2/4", "checking 1 pairs", "gapeval score: 100%", "[3/4", "summarising",
             "[4/4", "writing the report", "report grids", "gapeval score: done in"]
    positions = [err.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), err
    score({"a": tmp_path / "pred" / "a"}, tmp_path / "hr", out=tmp_path / "out2", metric="random-tiny", device="cpu", progress=False)
    assert capsys.readouterr().err == ""
