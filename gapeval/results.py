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
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gapeval.metrics import METRICS
from gapeval.metrics.opensr import COLUMNS as _OPENSR
from gapeval.metrics.opensr import TILES_COLUMN as OPENSR_TILES
from lpips_sat import atomic
from lpips_sat.atomic import make_folder, write_text_atomic
from lpips_sat.errors import InputError, MissingFileError

#: ``pairs.csv`` columns of ``--protocol opensr-test`` (opensr-test's key -> column).
OPENSR_COLUMNS = dict(_OPENSR)

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
        cols += list(LR_INVALID_COLUMNS)
    if config.with_lr and config.protocol == "opensr-test":
        cols += [*OPENSR_COLUMNS.values(), OPENSR_TILES]
    elif config.with_lr:
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
    if config.aligned:
        cols += [*ALIGN_COLUMNS, *[f"harm_{k}_{b}" for k in ("gain", "offset") for b in config.bands]]
        if config.report_raw:
            cols += [f"{RAW_PREFIX}{m}" for m in RAW_METRICS]
    return cols + list(TAIL_COLUMNS)


#: Bookkeeping of ``--align``/``--harmonize`` (valid-pixel weighted means over the windows of a pair; not metrics):
#: the estimated target displacement relative to the prediction (target px; the target was moved back by it), the
#: shift left after the correction, the phase-correlation peak quality, and the fraction of the pair's valid pixels
#: masked because the correction exposed them (or their window had too few valid pixels to align).
ALIGN_COLUMNS = ("align_dy", "align_dx", "align_residual_px", "align_quality", "align_masked_fraction")
#: With ``--report-raw``: these metrics also on the unaligned, unharmonised target (same pixels), as ``raw_<metric>``.
RAW_PREFIX, RAW_METRICS = "raw_", ("lpips_sat", "psnr", "ssim", "sam_deg", "ergas", "rmse", "mae")


#: With an LR input: its invalid (NaN/inf/nodata) pixels, which the LR-consistency metrics leave out (count on the LR
#: grid, and the fraction of its pixels); bookkeeping of the input, listed per file in ``summary.json`` ``lr_invalid``.
LR_INVALID_COLUMNS = ("lr_invalid_px", "lr_invalid_fraction")


def metric_columns(cols: Sequence[str]) -> list[str]:
    """The numeric result columns summarised per prediction set."""
    return [c for c in cols if c not in TEXT_COLUMNS and c not in ("seconds", "height", "width", "lpips_tiles", "tc_patches", OPENSR_TILES)
            and c not in LR_INVALID_COLUMNS and not c.startswith(("align_", "harm_"))]


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


def jsonable(obj: Any, digits: int | None = None) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, numpy scalars -> Python numbers; floats rounded to ``digits``
    decimals when given (stable files for diffs, e.g. the study's tables.json)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, (float, np.floating)):
        if not np.isfinite(obj):
            return None
        return float(obj) if digits is None else round(float(obj), digits)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ------------------------------------------------------------------------------------------------ appending


def append_line(path: str | Path, line: str) -> None:
    """Append one text record to ``path`` with a single ``write`` + ``fsync`` (a crash leaves at most one
    partial last record, which :func:`read_records_complete` drops)."""
    data = (line if line.endswith("\n") else line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


def _complete_csv(text: str) -> bool:
    """Whether ``text`` ends at a record boundary: a final newline outside quotes. Any other CSV error is left for the
    caller to report (only an end of data inside a quoted field is the mark of an interrupted append)."""
    if not text.endswith("\n"):
        return False
    try:
        _parse_csv(text)
    except csv.Error as exc:
        return "unexpected end of data" not in str(exc)
    return True


#: What to do about an unreadable ``pairs.csv`` of a results folder being written (``gapeval score --out``).
OUT_ADVICE = "use another --out, or --overwrite to start over"


def _read_complete(path: Path, advice: str = OUT_ADVICE) -> tuple[list[list[str]], str, str]:
    """``(records, complete_text, text)``: the file's CSV records without a trailing partial record; ``advice``
    ends the error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text table ({exc}); {advice}") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a folder, not a CSV table") from exc
    if "\x00" in text:
        raise InputError(f"{path}: not a text table (it contains NUL bytes: binary or corrupt); {advice}")
    complete = text
    while complete and not _complete_csv(complete):  # an interrupted append: cut back to a record boundary
        cut = complete.rfind("\n", 0, len(complete) - 1)
        complete = complete[: cut + 1] if cut >= 0 else ""
    try:
        records = _parse_csv(complete)
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc}); {advice}") from exc
    if complete != text:
        logger.warning("%s ended with a partial row (interrupted write); it is left out", path)
    return records, complete, text


def read_records_complete(path: str | Path) -> list[list[str]]:
    """CSV records of ``path`` (the csv module's rules: quoted fields may hold newlines or U+2028), without a trailing
    partial record left by an interrupted append (the file is then rewritten atomically without it).

    Raises:
        InputError: the file is not UTF-8 text or not CSV (binary, a broken quote before the last record).
    """
    path = Path(path)
    records, complete, text = _read_complete(path)
    if complete != text:
        write_text_atomic(path, complete)
    return records


def read_table(path: str | Path, advice: str = OUT_ADVICE) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (dicts of strings) of a CSV table such as ``pairs.csv``, read only (a trailing partial row is
    ignored); ``advice`` ends the error messages.

    Raises:
        InputError: not UTF-8 text, not CSV, or a row with another number of fields than the header (names the row).
    """
    path = Path(path)
    records = _read_complete(path, advice)[0]
    if not records:
        return [], []
    header = records[0]
    for i, rec in enumerate(records[1:], start=2):
        if len(rec) != len(header):
            raise InputError(f"{path}: row {i} has {len(rec)} fields instead of {len(header)} (corrupt or hand-edited)")
    return header, [dict(zip(header, r)) for r in records[1:]]


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([format_cell(v) for v in values])
    return buf.getvalue()


class PairsTable:
    """``pairs.csv``: header written atomically, then one row appended per pair (fsync'd), so an interrupted run
    keeps every finished row. With ``resume`` the rows of other configurations or changed files are dropped, and a
    key found twice (two runs appended to one folder) is kept once, with a warning."""

    def __init__(self, path: Path, cols: Sequence[str], config_hash: str, *, resume: bool, overwrite: bool) -> None:
        self.path, self.cols, self.config_hash = Path(path), list(cols), config_hash
        self.rows: list[dict[str, Any]] = []
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder; expected the pairs.csv file of a results folder")
        if self.path.exists() and self.path.stat().st_size:
            if resume:
                self._load()
                return
            if not overwrite:
                raise InputError(f"{self.path} already exists; pass --resume to continue that run or --overwrite to start over")
        write_text_atomic(self.path, _csv_line(self.cols))

    def _load(self) -> None:
        records = read_records_complete(self.path)
        header = records[0] if records else None
        if header != self.cols:
            raise InputError(
                f"{self.path} has other columns than this configuration writes (different bands, --lr given or not, or another --protocol); "
                "use another --out, or --overwrite to start over"
            )
        for i, rec in enumerate(records[1:], start=2):
            if len(rec) != len(header):
                raise InputError(
                    f"{self.path}: row {i} has {len(rec)} fields instead of {len(header)} (corrupt or hand-edited); "
                    "fix it, use another --out, or --overwrite to start over"
                )
        rows = [dict(zip(header, r)) for r in records[1:]]
        keep = [r for r in rows if r["config_hash"] == self.config_hash]
        if len(keep) != len(rows):
            logger.warning(
                "%s: %d rows were scored with another configuration; they will be scored again", self.path, len(rows) - len(keep)
            )
        unique = list({(r["pred_set"], r["key"]): r for r in keep}.values())  # the last row of a key wins
        if len(unique) != len(keep):
            logger.warning(
                "%s: %d duplicate rows (a key scored more than once, e.g. by two runs at the same time); keeping one row per key",
                self.path,
                len(keep) - len(unique),
            )
        if len(unique) != len(rows):
            write_text_atomic(self.path, "".join(_csv_line(r) for r in [header] + [list(r.values()) for r in unique]))
        try:
            self.rows = [parse_row(r) for r in unique]
        except ValueError as exc:
            raise InputError(f"{self.path}: a number column holds text ({exc}); fix it, or --overwrite to start over") from exc

    def done(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["pred_set"], r["key"]): r for r in self.rows}

    def drop(self, stale: set[tuple[str, str]]) -> None:
        """Remove rows (e.g. whose input files changed) so they are scored again."""
        if not stale:
            return
        self.rows = [r for r in self.rows if (r["pred_set"], r["key"]) not in stale]
        write_text_atomic(self.path, _csv_line(self.cols) + "".join(_csv_line(r.get(c) for c in self.cols) for r in self.rows))

    def append(self, record: Mapping[str, Any]) -> None:
        append_line(self.path, _csv_line(record.get(c) for c in self.cols))
        self.rows.append(parse_row({c: format_cell(record.get(c)) for c in self.cols}))


# ------------------------------------------------------------------------------------------------ folder


def prepare_out_dir(out: str | Path) -> Path:
    """Create the results folder ``out`` if needed and check that it is a writable folder.

    Raises:
        OutputError: ``out`` is a file, lies under a file, or cannot be created (:func:`lpips_sat.atomic.make_folder`).
        InputError: ``out`` is not writable, or a results file name is taken by a folder.
    """
    out = make_folder(out, "--out")
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: the folder is not writable")
    for name in (PAIRS_CSV, SUMMARY_JSON, "report.html", "report.md"):
        if (out / name).is_dir():
            raise InputError(f"{out / name}: is a folder, but gapeval score writes a file there; remove it or use another --out")
    return out


def remove_stale_temporaries(out: Path) -> int:
    """Delete every temporary file of atomic writes (``.NAME.*.tmp``) that an interrupted run left in ``out``; call
    only while holding :class:`ResultsLock` (no other run writes there). Returns how many were removed."""
    return atomic.remove_stale_temporaries(out, locked=True)


# ------------------------------------------------------------------------------------------------ lock

LOCK_FILE = ".gapeval.lock"


class ResultsLock:
    """An exclusive lock on a results folder for the length of a run: ``OUT/.gapeval.lock`` holds the holder's pid,
    host and start time and is locked with ``flock``.

    The kernel releases ``flock`` when its holder exits, however it exits (kill -9 included), so a lock file left by a
    dead run is stale by construction: the next run takes it over and says so. A second live run on the same folder
    gets an :class:`InputError` naming the holder. (``flock`` is local to one machine; on a network file system two
    machines may not see each other's locks, see docs/reliability.md.)
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> ResultsLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl
        import socket
        import time

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise InputError(
                    f"{self.path.parent}: results folder is in use by another gapeval run ({holder}); wait for it to finish "
                    "or use another --out"
                ) from None
            try:  # the holder may have removed the file between our open and our lock: then lock the new file
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._holder(fd)
        if previous != "unknown holder":
            logger.warning("%s: taking over a stale lock (%s ended without releasing it)", self.path, previous)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode())
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return "unknown holder"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


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
        corrections = [c for c in cols if c.startswith(("align_", "harm_"))]
        if corrections:  # what --align/--harmonize applied (bookkeeping, not metrics)
            out[name]["corrections"] = {c: summarize(np.array([r[c] for r in ok], dtype=float)) for c in corrections}
            out[name]["n_not_alignable"] = sum(r["status"] == "not_alignable" for r in mine)
    return out


def lr_invalid_files(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """LR inputs with invalid pixels, each once, in row order: ``{lr_path: {"key", "invalid_px", "invalid_fraction"}}``
    (``summary.json`` ``lr_invalid``; those pixels are left out of the LR-consistency metrics of their scene)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        n = r.get("lr_invalid_px")
        if r.get("lr_path") and n is not None and np.isfinite(n) and n > 0 and r["lr_path"] not in out:
            out[r["lr_path"]] = {"key": r["key"], "invalid_px": int(n), "invalid_fraction": float(r["lr_invalid_fraction"])}
    return out


def alignment_note(config: ScoreConfig, cols: Sequence[str]) -> dict[str, Any]:
    """``summary.json``'s statement of which columns compare the prediction with the raw target and which with the
    target aligned/harmonised onto it (``docs/metrics.md``, "Alignment and harmonisation")."""
    full_ref = [c for c in metric_columns(cols) if not c.startswith(RAW_PREFIX) and c.split("_")[0] in ("lpips", "psnr", "ssim", "sam", "ergas", "rmse", "mae")]
    if config.with_lr and config.protocol == "gapeval":
        full_ref += ["improvement", "omission", "hallucination"]
    lr_only = [c for c in metric_columns(cols) if c not in full_ref and not c.startswith(RAW_PREFIX)]
    if not config.aligned:
        return {"align": "none", "harmonize": "none", "raw": full_ref + lr_only}
    return {
        "align": config.align,
        "harmonize": config.harmonize,
        "max_shift_px": config.max_shift,
        "direction": "target resampled (cubic spline, exposed borders masked) and harmonised onto each prediction; predictions are never altered",
        "aligned": full_ref,
        "raw": [c for c in cols if c.startswith(RAW_PREFIX)],
        "unaffected": lr_only,
    }


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` (strict JSON: NaN -> null) atomically."""
    path = Path(out_dir) / SUMMARY_JSON
    write_text_atomic(path, json.dumps(jsonable(summary), indent=2) + "\n")
    return path


#: What a results folder argument must name (the end of the "is a file" error).
RESULTS_FOLDER = "a results folder written by `gapeval score --out`"


def results_file(folder: str | Path, name: str = PAIRS_CSV, *, expected: str = RESULTS_FOLDER, advice: str = "") -> Path:
    """``folder/name`` (``pairs.csv``, ``summary.json``) of a results folder, after checking that ``folder`` is a folder
    and ``name`` a file in it, so the error says what is actually wrong (missing, or a file where a folder must be, or
    the reverse); ``expected`` names what ``folder`` should be, ``advice`` ends the "does not exist" error of the file.

    Raises:
        MissingFileError: ``folder`` or ``folder/name`` does not exist. InputError: ``folder`` is a file, or
            ``folder/name`` is a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise MissingFileError(f"{folder}: does not exist; expected {expected}")
    if not folder.is_dir():
        raise InputError(f"{folder}: is a file, expected {expected}")
    path = folder / name
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected the {name} file that gapeval score writes")
    if not path.is_file():
        raise MissingFileError(f"{path}: does not exist{'; ' + advice if advice else ''}")
    return path


def load_results(out_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of ``pairs.csv`` (numbers parsed) and ``summary.json`` of a results folder.

    Raises:
        MissingFileError: either file is missing. InputError: either file is unreadable or corrupt.
    """
    out_dir = Path(out_dir)
    for name in (PAIRS_CSV, SUMMARY_JSON):
        results_file(out_dir, name, advice=f"run `gapeval score --out {out_dir}` first")
    _, rows = read_table(out_dir / PAIRS_CSV)
    try:
        parsed = [parse_row(r) for r in rows]
    except ValueError as exc:
        raise InputError(f"{out_dir / PAIRS_CSV}: a number column holds text ({exc})") from exc
    try:
        summary = json.loads((out_dir / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{out_dir / SUMMARY_JSON}: not readable JSON ({exc}); run gapeval score again") from exc
    return parsed, summary


def format_table(
    summary: Mapping[str, Any],
    metrics: Sequence[str] = ("lpips_sat", "psnr", "ssim", "sam_deg", "ergas", "refl_l1", "shift_px", "opensr_reflectance", "opensr_spatial"),
) -> str:
    """Plain-text table of mean [95 % CI] per prediction set (sets ranked by mean LPIPS-Sat, best first)."""
    sets = summary["pred_sets"]
    metrics = [m for m in metrics if any(m in s["metrics"] for s in sets.values())]
    ranked = sorted(sets, key=lambda k: _nan_last(sets[k]["metrics"].get("lpips_sat", {}).get("mean")))
    head = ["set", "n"] + [f"{m} ({'↓' if METRICS[m][0] == 'lower' else '↑'})" for m in metrics]
    rows = [head]
    for name in ranked:
        s = sets[name]
        cells = [name, f"{s['n_scored']}/{s['n_pairs']}"]
        for m in metrics:
            st = s["metrics"][m]
            ci = f" [{st['ci_low']:.3g}, {st['ci_high']:.3g}]" if np.isfinite(st["ci_low"]) else ""
            cells.append(f"{st['mean']:.4g}{ci}" if st["n"] else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _nan_last(value: Any) -> float:
    return float(value) if value is not None and np.isfinite(value) else math.inf
