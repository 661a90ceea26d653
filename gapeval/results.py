"""A ``gapeval score`` results folder: ``pairs.csv`` (one row per scored pair), ``summary.json``, ``maps/``.

The one place that knows the folder's layout and the table's format: column names (:func:`columns`), how cells are
written and parsed, the append-only :class:`PairsTable` that keeps finished rows across interruptions, the summary
statistics per prediction set, and :func:`load_results`, through which the report reads a folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lpips_sat.atomic import write_text_atomic
from lpips_sat.errors import InputError, MissingFileError

if TYPE_CHECKING:
    from gapeval.scoring.config import ScoreConfig

logger = logging.getLogger(__name__)

PAIRS_CSV, SUMMARY_JSON, MAPS_DIR = "pairs.csv", "summary.json", "maps"
#: Columns before and after the metric columns of ``pairs.csv``.
LEAD_COLUMNS = (
    "pred_set",
    "key",
    "status",
    "reason",
    "valid_fraction",
    "pred_invalid_fraction",
    "height",
    "width",
    "lpips_sat",
    "lpips_tiles",
)
TAIL_COLUMNS = ("seconds", "config_hash", "pred_path", "target_path", "lr_path", "pred_sha256", "target_sha256", "lr_sha256")
#: Columns of ``pairs.csv`` that are not metrics.
TEXT_COLUMNS = (
    "pred_set",
    "key",
    "status",
    "reason",
    "config_hash",
    "pred_path",
    "target_path",
    "lr_path",
    "pred_sha256",
    "target_sha256",
    "lr_sha256",
)


def columns(config: ScoreConfig) -> list[str]:
    """Column order of ``pairs.csv`` for ``config`` (per-band columns use the metric's band names)."""
    cols = list(LEAD_COLUMNS) + ["psnr", "ssim", "sam_deg", "ergas", "rmse", "mae"]
    cols += [f"{m}_{b}" for m in ("psnr", "ssim", "rmse", "mae") for b in config.bands]
    if config.with_lr:
        cols += [
            "refl_l1",
            *[f"refl_l1_{b}" for b in config.bands],
            "spectral_sam_deg",
            "shift_dx",
            "shift_dy",
            "shift_px",
            "improvement",
            "omission",
            "hallucination",
            "tc_patches",
        ]
    return cols + list(TAIL_COLUMNS)


def metric_columns(cols: Sequence[str]) -> list[str]:
    """The numeric result columns summarised per prediction set."""
    return [c for c in cols if c not in TEXT_COLUMNS and c not in ("seconds", "height", "width", "lpips_tiles", "tc_patches")]


# ------------------------------------------------------------------------------------------------ cells


def format_cell(value: Any) -> str:
    """A ``pairs.csv`` cell: empty for None/NaN, 10 significant digits for floats (``inf`` stays ``inf``)."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else format(float(value), ".10g")  # inf stays "inf" (PSNR of identical images)
    return str(value)


def parse_row(row: Mapping[str, str]) -> dict[str, Any]:
    """A ``pairs.csv`` row with numbers parsed (empty cells -> NaN; text columns kept as strings)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in TEXT_COLUMNS:
            out[k] = v
        elif k in ("height", "width"):
            out[k] = int(v) if v else 0
        else:
            out[k] = float(v) if v not in ("", None) else float("nan")
    return out


def jsonable(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ------------------------------------------------------------------------------------------------ appending


def append_line(path: str | Path, line: str) -> None:
    """Append one text line to ``path`` with a single ``write`` + ``fsync`` (a crash leaves at most one
    partial last line, which :func:`read_lines_complete` drops)."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines_complete(path: str | Path) -> list[str]:
    """Lines of ``path`` without a trailing partial line (rewritten atomically when one was dropped)."""
    text = Path(path).read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        logger.warning("%s ended with a partial line (interrupted write); dropped it", path)
        write_text_atomic(path, text)
    return text.splitlines()


class PairsTable:
    """``pairs.csv``: header written atomically, then one row appended per pair (fsync'd), so an interrupted run
    keeps every finished row. With ``resume`` the rows of other configurations or changed files are dropped."""

    def __init__(self, path: Path, cols: Sequence[str], config_hash: str, *, resume: bool, overwrite: bool) -> None:
        self.path, self.cols, self.config_hash = Path(path), list(cols), config_hash
        self.rows: list[dict[str, Any]] = []
        if self.path.exists() and self.path.stat().st_size:
            if resume:
                self._load()
                return
            if not overwrite:
                raise InputError(f"{self.path} already exists; pass --resume to continue that run or --overwrite to start over")
        write_text_atomic(self.path, self._line(self.cols))

    def _line(self, values: Iterable[Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([format_cell(v) for v in values])
        return buf.getvalue()

    def _load(self) -> None:
        lines = read_lines_complete(self.path)
        reader = csv.reader(lines)
        header = next(reader, None)
        if header != self.cols:
            raise InputError(
                f"{self.path} has other columns than this configuration writes (different bands, or --lr given or not); "
                "use another --out, or --overwrite to start over"
            )
        rows = [dict(zip(header, r)) for r in reader]
        keep = [r for r in rows if r["config_hash"] == self.config_hash]
        if len(keep) != len(rows):
            logger.warning(
                "%s: %d rows were scored with another configuration; they will be scored again", self.path, len(rows) - len(keep)
            )
            write_text_atomic(self.path, "".join(self._line(r.values()) for r in [dict(zip(header, header))] + keep))
        self.rows = [parse_row(r) for r in keep]

    def done(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["pred_set"], r["key"]): r for r in self.rows}

    def drop(self, stale: set[tuple[str, str]]) -> None:
        """Remove rows (e.g. whose input files changed) so they are scored again."""
        if not stale:
            return
        self.rows = [r for r in self.rows if (r["pred_set"], r["key"]) not in stale]
        write_text_atomic(self.path, self._line(self.cols) + "".join(self._line(r.get(c) for c in self.cols) for r in self.rows))

    def append(self, record: Mapping[str, Any]) -> None:
        append_line(self.path, self._line(record.get(c) for c in self.cols))
        self.rows.append(parse_row({c: format_cell(record.get(c)) for c in self.cols}))


# ------------------------------------------------------------------------------------------------ summary


def versions() -> dict[str, str]:
    """Versions of the packages that produce the numbers, recorded in ``summary.json``."""
    import rasterio
    import scipy
    import torch

    import gapeval
    import lpips_sat

    return {
        "gapeval": gapeval.__version__,
        "lpips_sat": lpips_sat.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
    }


def summarize_rows(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> dict[str, Any]:
    """Per prediction set: counts and, per metric column, mean/median/std/bootstrap 95 % CI of the scored pairs."""
    from gapeval.stats import summarize

    out: dict[str, Any] = {}
    for name in sorted({r["pred_set"] for r in rows}):
        mine = [r for r in rows if r["pred_set"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        metrics = {c: summarize(np.array([r[c] for r in ok], dtype=float)) for c in metric_columns(cols)}
        out[name] = {"n_pairs": len(mine), "n_scored": len(ok), "n_skipped": len(mine) - len(ok), "metrics": metrics}
    return out


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` (strict JSON: NaN -> null) atomically."""
    path = Path(out_dir) / SUMMARY_JSON
    write_text_atomic(path, json.dumps(jsonable(summary), indent=2) + "\n")
    return path


def load_results(out_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of ``pairs.csv`` (numbers parsed) and ``summary.json`` of a results folder."""
    out_dir = Path(out_dir)
    for name in (PAIRS_CSV, SUMMARY_JSON):
        if not (out_dir / name).is_file():
            raise MissingFileError(f"{out_dir / name} does not exist; run `gapeval score --out {out_dir}` first")
    with open(out_dir / PAIRS_CSV, newline="") as fh:
        rows = [parse_row(r) for r in csv.DictReader(fh)]
    return rows, json.loads((out_dir / SUMMARY_JSON).read_text())
