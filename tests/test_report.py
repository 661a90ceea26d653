"""gapeval report: HTML/Markdown with figures, from a results folder, with and without maps."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from gapeval.report import write_report
from gapeval.results import load_results
from gapeval.score import score
from lpips_sat import LPIPSSat
from lpips_sat.errors import MissingFileError

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    for sub in ("hr", "lr", "pred/bicubic", "pred/noisy"):
        (root / sub).mkdir(parents=True)
        for name in ("fields", "town", "barrier_beach"):
            shutil.copy(EXAMPLES / sub / f"{name}.tif", root / sub / f"{name}.tif")
    out = root / "out"
    score(
        {n: root / "pred" / n for n in ("bicubic", "noisy")},
        root / "hr",
        lr=root / "lr",
        metric=LPIPSSat.random(),
        out=out,
        report=True,
        maps=True,
    )
    return out


def test_report_files_and_images(results):
    html = (results / "report.html").read_text()
    md = (results / "report.md").read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    assert set(images) == {"figures/boxplots.png", "figures/ecdf.png", "figures/pairs_bicubic.png", "figures/pairs_noisy.png"}
    for rel in images:
        with Image.open(results / rel) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        assert f"]({rel})" in md
    with Image.open(results / "figures" / "pairs_bicubic.png") as im:
        assert im.size[1] > 2.5 * 200  # best + worst rows (2 + 1 of 3 scenes)
    for text in (html, md):
        assert "bicubic" in text and "noisy" in text and "lpips_sat" in text and "not meaningful" in text
        assert "Ranking" in text and "Consistency with the LR input" in text
    assert "LPIPS-Sat map (this crop)" not in html  # labels live in the PNG, not the HTML
    rows, summary = load_results(results)
    assert len(rows) == 6 and set(summary["pred_sets"]) == {"bicubic", "noisy"}


def test_report_from_results_alone(results, tmp_path, monkeypatch):
    from gapeval.metrics import perceptual

    copy = tmp_path / "out"
    shutil.copytree(results, copy)
    for f in (copy / "figures").iterdir():
        f.unlink()

    def no_network(*args, **kwargs):
        raise AssertionError("maps exist: the report must read them, not run the network")

    monkeypatch.setattr(perceptual, "TiledLPIPS", no_network)
    write_report(copy, metric=LPIPSSat.random())
    assert (copy / "figures" / "pairs_noisy.png").is_file()
    shutil.rmtree(copy / "maps")
    (copy / "figures" / "pairs_noisy.png").unlink()
    write_report(copy)  # no maps and no metric: grids without the map column
    assert (copy / "figures" / "pairs_noisy.png").is_file() and (copy / "report.html").is_file()
    with pytest.raises(MissingFileError, match="nothing: does not exist; expected a results folder"):
        write_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="pairs.csv: does not exist"):
        write_report(tmp_path / "empty")


def test_constant_metrics_are_listed_not_drawn(results, tmp_path):
    import csv

    from gapeval.report import _split_constant

    rows = [{"pred_set": "a", "x": 0.0, "y": 1.0}, {"pred_set": "b", "x": 0.0, "y": 2.0}, {"pred_set": "b", "x": float("nan"), "y": 3.0}]
    assert _split_constant(rows, ["x", "y"]) == (["y"], {"x": 0.0})
    copy = tmp_path / "res"
    shutil.copytree(results, copy)
    with open(copy / "pairs.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    for r in table:
        r["shift_px"] = "0"
    with open(copy / "pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    write_report(copy)
    md = (copy / "report.md").read_text()
    assert "not drawn, the same in every pair: shift_px = 0" in md
    with Image.open(copy / "figures" / "ecdf.png") as fewer, Image.open(results / "figures" / "ecdf.png") as full:
        assert fewer.size[0] * fewer.size[1] <= full.size[0] * full.size[1]  # one panel fewer never grows the figure
