"""Scoring past one machine: split the pairs of ``gapeval score`` into shards, merge the shards' results folders.

- ``gapeval score --shard K/N`` scores the scenes whose key hashes to shard K (:func:`shard_of`): the first 8 bytes of
  the key's SHA-256, modulo N. A scene's shard depends on its key and N only, so adding files never moves the others.
- ``gapeval merge OUT_1 ... OUT_N --out OUT`` (:func:`merge_results`) checks that the shards are one split of one
  configuration with the same weights and inputs, concatenates their ``pairs.csv`` rows in the order an unsharded run
  writes them, and recomputes ``summary.json`` (and the report), so the merged folder equals an unsharded run.
- Under ``torchrun`` (:func:`distributed_env`: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) every rank scores shard
  ``RANK + 1`` of ``WORLD_SIZE`` into ``OUT/shards/K-of-N`` on ``cuda:LOCAL_RANK`` (when CUDA is there), waits for the
  others at a gloo barrier, and rank 0 merges into ``OUT``.

Each shard folder is a complete, resumable results folder: an interrupted shard continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gapeval.folders import Pairing
from gapeval.results import (
    MAPS_DIR,
    PAIRS_CSV,
    SUMMARY_JSON,
    ResultsLock,
    format_table,
    lr_invalid_files,
    parse_row,
    prepare_out_dir,
    read_records_complete,
    results_file,
    summarize_rows,
    write_summary,
)
from lpips_sat.atomic import write_text_atomic
from lpips_sat.cli import EXIT_PARTIAL
from lpips_sat.errors import InputError
from lpips_sat.options import device

#: Sub-folder of ``OUT`` holding the shards of a ``torchrun`` run.
SHARDS_DIR = "shards"


# ---------------------------------------------------------------------------------------------- splitting
def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``; raises ``argparse.ArgumentTypeError`` (a usage error)."""
    k, sep, n = str(text).partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()) or not 1 <= int(k) <= int(n):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (e.g. 2/8), got {text!r}")
    return int(k), int(n)


def shard_of(key: str, n: int) -> int:
    """The shard (1..n) of scene ``key``: first 8 bytes of SHA-256(key, UTF-8) as a big-endian integer, mod n, + 1."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % n + 1


def select_shard(pairing: Pairing, k: int, n: int) -> Pairing:
    """The part of ``pairing`` whose keys fall in shard ``k`` of ``n`` (unpaired-file lists too)."""
    mine = {key for key in pairing.targets if shard_of(key, n) == k}
    unpaired = {label: [key for key in keys if shard_of(key, n) == k] for label, keys in pairing.unpaired.items()}
    return Pairing(
        targets={key: p for key, p in pairing.targets.items() if key in mine},
        preds={name: {key: p for key, p in files.items() if key in mine} for name, files in pairing.preds.items()},
        lr=None if pairing.lr is None else {key: p for key, p in pairing.lr.items() if key in mine},
        unpaired={label: keys for label, keys in unpaired.items() if keys},
    )


def shard_dir(out: str | Path, k: int, n: int) -> Path:
    """``OUT/shards/K-of-N`` (K zero-padded so that the folders sort in order)."""
    return Path(out) / SHARDS_DIR / f"{k:0{len(str(n))}d}-of-{n}"


# ---------------------------------------------------------------------------------------------- merging
def _read_shard(folder: Path) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """Header, raw rows (strings, as written) and summary of one shard folder."""
    for name in (PAIRS_CSV, SUMMARY_JSON):
        results_file(folder, name, expected="a results folder written by `gapeval score --shard K/N --out`",
                     advice=f"is {folder} a finished `gapeval score --shard K/N` results folder?")
    try:
        summary = json.loads((folder / SUMMARY_JSON).read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError (a binary file)
        raise InputError(f"{folder / SUMMARY_JSON}: not valid JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{folder / SUMMARY_JSON}: a JSON {type(summary).__name__}, not the summary object gapeval score writes")
    records = read_records_complete(folder / PAIRS_CSV)
    if not records:
        raise InputError(f"{folder / PAIRS_CSV} is empty; score the shard again (--overwrite)")
    return records[0], records[1:], summary


def _config_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    diff = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(diff[:5]) or "same fields, different hash"


def check_shards(folders: Sequence[Path], summaries: Sequence[Mapping[str, Any]]) -> tuple[int, dict[int, Path]]:
    """``(N, {K: folder})`` after checking that the folders are distinct shards of one split of one run.

    Raises:
        InputError: a folder is not a shard, the shards differ in N, configuration, weights, inputs or columns, or two
            folders are the same shard.
    """
    first, base = folders[0], summaries[0]
    by_index: dict[int, Path] = {}
    n = None
    for folder, s in zip(folders, summaries):
        shard = s.get("shard")
        if not isinstance(shard, dict) or "index" not in shard or "count" not in shard:
            raise InputError(f"{folder / SUMMARY_JSON}: not a shard (no 'shard' entry); score it with `gapeval score --shard K/N`")
        k, count = int(shard["index"]), int(shard["count"])
        if n is None:
            n = count
        elif count != n:
            raise InputError(f"{folder} is shard {k}/{count} but {first} is of a split into {n}; merge shards of one split")
        if k in by_index:
            raise InputError(f"{by_index[k]} and {folder} are both shard {k}/{n}")
        by_index[k] = folder
        if (s.get("weights") or {}).get("sha256") != (base.get("weights") or {}).get("sha256"):
            w, w0 = s.get("weights") or {}, base.get("weights") or {}
            raise InputError(f"{folder} was scored with other weights than {first}: {w.get('name')} ({str(w.get('sha256'))[:12]}) vs "
                             f"{w0.get('name')} ({str(w0.get('sha256'))[:12]})")
        if s.get("config_hash") != base.get("config_hash"):
            raise InputError(f"{folder} was scored with another configuration than {first}: "
                             f"{_config_difference(s.get('config') or {}, base.get('config') or {})}")
        if _folders(s) != _folders(base):
            raise InputError(f"{folder} scored other inputs than {first}: {_folders(s)} vs {_folders(base)}")
        if s.get("columns") != base.get("columns"):
            raise InputError(f"{folder} has other columns than {first}")
    return int(n or 0), by_index


def _folders(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The input folders of a summary (without the per-file lists, which differ between shards)."""
    return {k: v for k, v in (summary.get("inputs") or {}).items() if k != "assumed_band_order"}


def _merge_assumed(summaries: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]], sets: Sequence[str]) -> dict[str, Any]:
    """``inputs["assumed_band_order"]`` of the whole run: the shards' file lists joined in the unsharded order (targets
    and LR inputs by scene key, predictions by set then key; the keys come from the rows' paths)."""
    key_of: dict[str, str] = {}
    set_of: dict[str, str] = {}
    for r in records:
        for col in ("target_path", "lr_path", "pred_path"):
            if r.get(col):
                key_of[str(r[col])] = r["key"]
        if r.get("pred_path"):
            set_of[str(r["pred_path"])] = r["pred_set"]
    out: dict[str, Any] = {}
    for role in ("target", "pred", "lr"):
        parts = [((s.get("inputs") or {}).get("assumed_band_order") or {}).get(role) for s in summaries]
        parts = [p for p in parts if p]
        if not parts:
            continue
        files = sorted({f for p in parts for f in p["files"]},
                       key=lambda f: ((sets.index(set_of[f]) if set_of.get(f) in sets else len(sets)) if role == "pred" else 0,
                                      key_of.get(f, f)))
        out[role] = {"order": parts[0]["order"], "files": files}
    return out


def _csv_line(values: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def merge_results(
    folders: Sequence[str | Path],
    out: str | Path,
    *,
    overwrite: bool = False,
    allow_partial: bool = False,
    report: bool = False,
    metric: Any = None,
) -> dict[str, Any]:
    """Merge shard results folders into ``out``; returns the merged summary (``summary["shards"]["missing"]`` lists
    shards not given, only possible with ``allow_partial``).

    The merged ``pairs.csv`` holds the shards' rows as written (no number is re-formatted), in the order one unsharded
    process appends them (scenes by key, prediction sets in input order within a scene); ``summary.json`` is recomputed from them; maps are copied.

    Raises:
        MissingFileError: a folder without ``pairs.csv``/``summary.json``. InputError: see :func:`check_shards`;
            missing shards (unless ``allow_partial``); a row whose scene belongs to another shard; ``out`` already
            holding results (unless ``overwrite``) or being one of the shards.
    """
    folders = [Path(f) for f in folders]
    out = Path(out)
    if not folders:
        raise InputError("no shard folders given")
    if any(f.resolve() == out.resolve() for f in folders):
        raise InputError(f"--out {out} is one of the shards; merge into another folder")
    read = [_read_shard(f) for f in folders]
    n, by_index = check_shards(folders, [s for _, _, s in read])
    missing = [k for k in range(1, n + 1) if k not in by_index]
    if missing and not allow_partial:
        raise InputError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} not given; pass every shard "
                         "(or --allow-partial to merge the others, exit 3)")
    if (out / PAIRS_CSV).exists() and not overwrite:
        raise InputError(f"{out / PAIRS_CSV} already exists; pass --overwrite to replace it")
    header = read[0][0]
    base = read[0][2]
    sets = list((base.get("inputs") or {}).get("pred") or {})
    i_set, i_key = header.index("pred_set"), header.index("key")
    rows: list[list[str]] = []
    seen: dict[tuple[str, str], Path] = {}
    for folder, (_, shard_rows, summary) in zip(folders, read):
        k = int(summary["shard"]["index"])
        for row in shard_rows:
            ident = (row[i_set], row[i_key])
            if shard_of(row[i_key], n) != k:
                raise InputError(f"{folder / PAIRS_CSV}: scene {row[i_key]!r} belongs to shard {shard_of(row[i_key], n)}/{n}, not {k}/{n}")
            if ident in seen:
                raise InputError(f"{folder / PAIRS_CSV} and {seen[ident] / PAIRS_CSV} both hold {ident[0]}/{ident[1]}")
            if ident[0] in sets:  # a resumed shard file may also hold other sets; the summary's sets count
                seen[ident] = folder
                rows.append(row)
    rows.sort(key=lambda r: (r[i_key], sets.index(r[i_set])))  # as one unsharded process appends them: scene by scene
    with ResultsLock(prepare_out_dir(out)):  # one writer per results folder, as for gapeval score
        return _write_merged(folders, out, header, rows, read, sets, n, by_index, missing, report, metric)


def _write_merged(folders: Sequence[Path], out: Path, header: list[str], rows: list[list[str]], read: Sequence[Any],
                  sets: Sequence[str], n: int, by_index: Mapping[int, Path], missing: list[int], report: bool, metric: Any) -> dict[str, Any]:
    base = read[0][2]
    write_text_atomic(out / PAIRS_CSV, _csv_line(header) + "".join(_csv_line(r) for r in rows))
    records = [parse_row(dict(zip(header, r))) for r in rows]
    unpaired: dict[str, list[str]] = {}
    for _, _, summary in read:
        for label, keys in (summary.get("unpaired") or {}).items():
            unpaired.setdefault(label, []).extend(keys)
    merged = {key: value for key, value in base.items() if key != "shard"}
    inputs = dict(base.get("inputs") or {})
    if "assumed_band_order" in inputs:
        inputs["assumed_band_order"] = _merge_assumed([s for _, _, s in read], records, sets)
    merged.update(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        inputs=inputs,
        pred_sets=summarize_rows(records, header),
        skipped=[{"pred_set": r["pred_set"], "key": r["key"], "status": r["status"], "reason": r["reason"]}
                 for r in records if r["status"] != "ok"],
        unpaired={label: sorted(keys) for label, keys in unpaired.items()},
        lr_invalid=lr_invalid_files(records),
        shards={"count": n, "merged": {str(k): str(by_index[k]) for k in sorted(by_index)}, "missing": missing},
    )
    _copy_maps(folders, out)
    write_summary(out, merged)
    if report:
        from gapeval.report import write_report

        write_report(out, metric=metric)
    return merged


def _copy_maps(folders: Sequence[Path], out: Path) -> None:
    """Copy each shard's ``maps/`` tree into ``out/maps`` (hard links where the file system allows)."""
    for folder in folders:
        src = folder / MAPS_DIR
        if not src.is_dir():
            continue
        for path in src.rglob("*"):
            if path.is_file():
                dst = out / MAPS_DIR / path.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.exists():
                    dst.unlink()
                try:
                    os.link(path, dst)
                except OSError:
                    shutil.copy2(path, dst)


def recorded_metric(summary: Mapping[str, Any], device: str | None = None) -> Any:
    """The LPIPS-Sat network named in ``summary`` when it loads and its sha256 matches, else ``None`` (the report then
    draws no maps that ``--maps`` did not write)."""
    from gapeval.scoring.weights import load_metric
    from lpips_sat.errors import LPIPSSatError

    w = summary.get("weights") or {}
    try:
        net, _, sha = load_metric(w.get("name"), device)
    except (LPIPSSatError, OSError):
        return None
    return net if sha == w.get("sha256") else None


# ---------------------------------------------------------------------------------------------- torchrun
def distributed_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` set by ``torchrun`` (or ``accelerate launch``), or ``None`` outside one or
    with a single process."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    except (KeyError, ValueError) as exc:
        raise InputError(f"torchrun environment incomplete or not numbers (RANK, WORLD_SIZE, LOCAL_RANK): {exc}") from exc
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return rank, world, local


def barrier(timeout_s: float) -> None:
    """Wait until every rank arrives (a gloo process group from torchrun's ``MASTER_ADDR``/``MASTER_PORT``)."""
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    dist.barrier()


def finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check_merge_target(out: str | Path, overwrite: bool) -> None:
    """Refuse to let a ``torchrun`` run replace results in ``out`` that no earlier merge wrote (unless ``overwrite``)."""
    out = Path(out)
    if not (out / PAIRS_CSV).exists() or overwrite:
        return
    try:
        merged_before = "shards" in json.loads((out / SUMMARY_JSON).read_text())
    except (OSError, ValueError, TypeError):  # unreadable, binary, or not a JSON object
        merged_before = False
    if not merged_before:
        raise InputError(f"{out / PAIRS_CSV} already exists and is not a merged sharded run; pass --overwrite (or --resume) "
                         "or use another --out")


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gapeval merge`` arguments."""
    parser.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="results folders of gapeval score --shard K/N (all N)")
    parser.add_argument("--out", required=True, metavar="DIR", help="merged results folder: pairs.csv, summary.json (+ maps/, report)")
    parser.add_argument("--report", action="store_true", help="write report.html and report.md for the merged results")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--allow-partial", action="store_true", help="merge the shards given even if some are missing (exit 3)")
    parser.add_argument("--device", type=device, default="cpu", help="device for the report's LPIPS-Sat maps: cpu, cuda, auto ... (default cpu)")


def run(args: argparse.Namespace) -> int:
    """``gapeval merge``: exit 0, 3 when shards were missing (``--allow-partial``), 1 on a data error."""
    metric = None
    if args.report:  # the weights the shards recorded draw the report's map crops (a bad folder fails in the merge)
        try:
            metric = recorded_metric(json.loads((Path(args.shards[0]) / SUMMARY_JSON).read_text()), args.device)
        except (OSError, json.JSONDecodeError):
            metric = None
    summary = merge_results(args.shards, args.out, overwrite=args.overwrite, allow_partial=args.allow_partial, report=args.report,
                            metric=metric)
    print(format_table(summary))
    shards = summary["shards"]
    print(f"merged {len(shards['merged'])} of {shards['count']} shards into {Path(args.out) / PAIRS_CSV} and {Path(args.out) / SUMMARY_JSON}"
          + (f" and {Path(args.out) / 'report.html'}" if args.report else ""))
    if shards["missing"]:
        print(f"partial: shard(s) {', '.join(str(k) for k in shards['missing'])} of {shards['count']} missing")
        return EXIT_PARTIAL
    return 0
