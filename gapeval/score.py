"""``gapeval score``: score folders of super-resolved predictions against high-resolution targets.

Data flow (one scene = one target and every prediction of it):

    pair files by key (:mod:`gapeval.folders`) -> check headers: bands, scale, grids, all before any pixel is read
    (:mod:`gapeval.scoring.plan`) -> score each scene window by window (:mod:`gapeval.scoring.scene`, in threads:
    :mod:`gapeval.scoring.runner`) -> one row per (prediction set, scene) appended to ``pairs.csv`` -> ``summary.json``
    (:mod:`gapeval.results`) -> optional report (:mod:`gapeval.report`)

The Python API is :func:`score` (also callable as ``gapeval.score(...)``); the command line is
:func:`add_arguments` / :func:`run`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gapeval import shards
from gapeval.align import ALIGN_MODES, DEFAULT_MAX_SHIFT, HARMONIZE_MODES
from gapeval.folders import Pairing, pair_folders
from gapeval.grids import RESAMPLING_METHODS
from gapeval.progress import Stages
from gapeval.results import (
    MAPS_DIR,
    PAIRS_CSV,
    SUMMARY_JSON,
    PairsTable,
    ResultsLock,
    alignment_note,
    columns,
    format_cell,
    format_table,
    lr_invalid_files,
    parse_row,
    prepare_out_dir,
    remove_stale_temporaries,
    summarize_rows,
    versions,
    write_summary,
)
from gapeval.scoring import runner
from gapeval.scoring.config import DEFAULT_TILE, INVALID_PRED_POLICIES, PROTOCOLS, RANDOM_WEIGHTS, ScoreConfig
from gapeval.scoring.plan import FileHashes, assumed_band_orders, plan_pairs
from gapeval.scoring.weights import load_metric
from lpips_sat.cli import EXIT_PARTIAL, EXIT_USAGE
from lpips_sat.errors import InputError
from lpips_sat.metric import MIN_SIZE, LPIPSSat
from lpips_sat.options import device, int_at_least, number, positive_float, ratio_above_one
from lpips_sat.registry import DEFAULT_NAME

logger = logging.getLogger(__name__)



@dataclass
class ScoreResult:
    """What :func:`score` returns: one record per pair (dicts keyed by :func:`gapeval.results.columns`), the summary,
    the output folder."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path | None = None
    config: ScoreConfig | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def table(self, metric: str = "lpips_sat") -> dict[str, float]:
        """Mean of ``metric`` per prediction set."""
        return {k: v["metrics"][metric]["mean"] for k, v in self.summary["pred_sets"].items()}


def _pred_sets(pred: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(pred, Mapping):
        return {str(k): Path(v) for k, v in pred.items()}
    items = [pred] if isinstance(pred, (str, Path)) else list(pred)
    out: dict[str, Path] = {}
    for item in items:
        name = Path(item).name or str(item)
        if name in out:
            raise InputError(f"Two prediction folders are both named {name!r}; name them (name=DIR on the command line, a dict in Python)")
        out[name] = Path(item)
    return out


def score(
    pred: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    target: str | Path,
    *,
    lr: str | Path | None = None,
    out: str | Path | None = None,
    metric: str | Path | LPIPSSat | None = None,
    pred_bands: str | None = None,
    target_bands: str | None = None,
    lr_bands: str | None = None,
    pred_scale: float | None = None,
    target_scale: float | None = None,
    lr_scale: float | None = None,
    data_range: float = 1.0,
    resample: str | None = None,
    tile: int = DEFAULT_TILE,
    batch_size: int = 8,
    sr_factor: float | None = None,
    pattern: str | None = None,
    allow_missing: bool = False,
    maps: bool = False,
    report: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    strict_bands: bool = False,
    invalid_pred: str = "fail",
    workers: int = 1,
    device: str | None = None,
    progress: bool = False,
    protocol: str = "gapeval",
    align: str = "none",
    harmonize: str = "none",
    max_shift: float = DEFAULT_MAX_SHIFT,
    report_raw: bool = False,
    shard: tuple[int, int] | None = None,
) -> ScoreResult:
    """Score super-resolved predictions against high-resolution targets (folders of GeoTIFF/PNG/JPEG/.npy).

    Args:
        pred: a prediction folder, a list of folders (named by folder name) or ``{name: folder}``.
        target: folder of high-resolution targets; files pair by relative path and stem.
        lr: optional folder of the low-resolution inputs (adds LR-consistency and correctness metrics).
        out: results folder (``pairs.csv``, ``summary.json``, ``maps/``, report); ``None`` keeps results in memory.
        metric: LPIPS-Sat weights (registry name, ``.safetensors`` path, ``"random-tiny"`` for tests) or an
            :class:`~lpips_sat.metric.LPIPSSat` instance; default the shipped ``lpips-sat-s2-rn18``.
        pred_bands, target_bands, lr_bands: band order of the files (preset or names); default from band
            descriptions, else assumed to be the metric's bands when the count matches.
        pred_scale, target_scale, lr_scale: divide raw values by this (10000 for Sentinel-2 DN); default the files'
            own scale/offset metadata, else values are taken as reflectance (checked for plausibility).
        data_range: peak-to-peak range for PSNR/SSIM (1.0 for reflectance).
        resample: method to bring predictions onto the target grid when grids differ; ``None`` makes that an error.
        tile, batch_size: window size in pixels and LPIPS-Sat tiles per network call.
        sr_factor: LR/HR pixel-size ratio for ERGAS when ``lr`` is not given.
        pattern: glob on relative paths selecting files; allow_missing: score complete pairs, list the rest.
        maps: write georeferenced LPIPS-Sat maps; report: write the HTML/Markdown report (both need ``out``).
        resume: skip pairs already in ``out/pairs.csv`` with this configuration and unchanged files.
        overwrite: replace an existing ``pairs.csv`` (otherwise an error unless ``resume``).
        invalid_pred: ``"fail"`` (default): a prediction with NaN/inf/nodata pixels where the target is valid fails its
            pair (status ``failed``, no numbers); ``"mask"``: score only its valid pixels (``pred_invalid_fraction``).
        strict_bands: refuse files whose band order would be assumed (no ``*_bands`` and no band names); otherwise
            the assumed order is recorded in ``summary["inputs"]["assumed_band_order"]``.
        workers: scenes scored in parallel threads. device: ``cpu``, ``cuda``, ``auto``.
        progress: a line per stage and progress bars with an ETA (stderr).
        shard: ``(K, N)``: score only the scenes of shard K of N (:func:`gapeval.shards.shard_of`); merge the N
            results folders with :func:`gapeval.shards.merge_results` (``gapeval merge``).
        protocol: ``"gapeval"`` (default) or ``"opensr-test"``: which LR-consistency/correctness columns (needs ``lr``;
            ``docs/metrics.md``).
        align, harmonize, max_shift, report_raw: bring each target onto each prediction before the full-reference
            metrics (``gapeval.align.align_pair`` per window: ``"none"|"shift"|"shift+affine"`` and
            ``"none"|"linear"|"histogram"``; targets shifted by more than ``max_shift`` px are listed as
            ``not_alignable``); ``report_raw`` adds the unaligned values as ``raw_*`` columns (``docs/metrics.md``).
    Returns:
        :class:`ScoreResult` with ``records`` (one dict per pair, metrics as floats, NaN where not applicable)
        and ``summary`` (per prediction set and metric: n, mean, median, std, ci_low, ci_high).
    Raises:
        InputError, MissingFileError, WeightsError: bad inputs, each naming the file and the problem.
    """
    if (maps or report or resume) and out is None:
        raise InputError("maps, report and resume need an output folder (out=...)")
    if workers < 1 or batch_size < 1:
        raise InputError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    preds = _pred_sets(pred)
    stage = Stages("gapeval score", 3 + bool(out is not None and report), enabled=progress)
    stage(f"loading LPIPS-Sat weights {metric if isinstance(metric, (str, Path)) else getattr(metric, 'name', DEFAULT_NAME)}"
          f"{f' on {device}' if device and device != 'auto' else ''}")
    net, label, sha = load_metric(metric, device)
    config = ScoreConfig(
        weights=label,
        weights_sha256=sha,
        bands=tuple(net.model_bands),
        with_lr=lr is not None,
        pred_bands=pred_bands,
        target_bands=target_bands,
        lr_bands=lr_bands,
        pred_scale=pred_scale,
        target_scale=target_scale,
        lr_scale=lr_scale,
        data_range=data_range,
        resample=resample,
        tile=tile,
        sr_factor=sr_factor,
        pattern=pattern,
        protocol=protocol,
        invalid_pred=invalid_pred,
        align=align,
        harmonize=harmonize,
        max_shift=max_shift,
        report_raw=report_raw,
    )
    pairing = pair_folders(target, preds, lr, pattern=pattern, allow_missing=allow_missing)
    if shard is not None:
        pairing = shards.select_shard(pairing, *shard)
    stage(f"checking {pairing.n_pairs} pairs{f' (shard {shard[0]}/{shard[1]})' if shard else ''}: headers, grids, file hashes")
    hashes = FileHashes()
    inputs = {
        "pred": {k: str(v) for k, v in preds.items()},
        "target": str(target),
        "lr": str(lr) if lr else None,
        "assumed_band_order": assumed_band_orders(pairing, preds, config, hashes, strict=strict_bands),
    }
    score_into = functools.partial(
        _score_pairs, pairing, preds, inputs, config, net, hashes=hashes, batch_size=batch_size, workers=workers, stage=stage, shard=shard
    )
    if out is None:
        result = score_into(None, progress=progress)
        stage.done()
        return result
    out_dir = prepare_out_dir(out)
    with ResultsLock(out_dir):
        remove_stale_temporaries(out_dir)
        table = PairsTable(out_dir / PAIRS_CSV, columns(config), config.hash(), resume=resume, overwrite=overwrite)
        result = score_into(table, progress=progress, maps=maps)
        write_summary(out_dir, result.summary)
        if report:
            from gapeval.report import write_report

            stage("writing the report: figures and best/worst grids")
            write_report(out_dir, metric=net, progress=progress)
    stage.done()
    return result


def _score_pairs(
    pairing: Pairing,
    preds: Mapping[str, Path],
    inputs: Mapping[str, Any],
    config: ScoreConfig,
    net: LPIPSSat,
    table: PairsTable | None,
    *,
    hashes: FileHashes,
    batch_size: int,
    workers: int,
    progress: bool,
    stage: Stages,
    shard: tuple[int, int] | None = None,
    maps: bool = False,
) -> ScoreResult:
    """Score the pairs not yet in ``table`` (all without a table), append them to it, and summarise this run's pairs."""
    cols = columns(config)
    done = table.done() if table else {}
    plans, stale = plan_pairs(pairing, preds, config, done, hashes, progress=progress)
    if table is not None:
        table.drop(stale)
    if done:
        logger.info("resume: %d pairs already scored, %d to score", len(done) - len(stale), sum(len(p.preds) for p in plans))
    new_records = runner.run_plans(
        plans,
        config,
        net,
        batch_size=batch_size,
        maps_dir=table.path.parent / MAPS_DIR if maps and table else None,
        workers=workers,
        progress=progress,
        sink=table.append if table else None,
    )
    if table is not None:  # rows of this run's sets and scenes (a resumed file may hold others)
        records = [r for r in table.rows if r["pred_set"] in preds and r["key"] in pairing.targets]
    else:
        records = [parse_row({c: format_cell(r.get(c)) for c in cols}) for r in new_records]
    records.sort(key=_record_order(list(preds), pairing.keys))
    skipped = [
        {"pred_set": r["pred_set"], "key": r["key"], "status": r["status"], "reason": r["reason"]} for r in records if r["status"] != "ok"
    ]
    stage(f"summarising {len(preds)} prediction set(s): bootstrap 95 % CIs of {len(cols)} columns")
    summary = _summary(config, inputs, records, cols, pairing, skipped)
    if shard is not None:
        summary["shard"] = {"index": shard[0], "count": shard[1]}
    return ScoreResult(records, summary, table.path.parent if table else None, config, skipped)


def _record_order(sets: Sequence[str], keys: Sequence[str]) -> Any:
    """Sort key of records: prediction sets in the order given, then scenes in key order (unknown ones last)."""
    order = {k: i for i, k in enumerate(keys)}

    def key(r: Mapping[str, Any]) -> tuple[int, int]:
        return (sets.index(r["pred_set"]) if r["pred_set"] in sets else len(sets), order.get(r["key"], len(order)))

    return key


def _summary(
    config: ScoreConfig,
    inputs: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    cols: Sequence[str],
    pairing: Pairing,
    skipped: list[dict[str, Any]],
) -> dict[str, Any]:
    """The content of ``summary.json``: inputs, configuration, weights, versions, statistics per prediction set."""
    return {
        "command": "gapeval score",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": dict(inputs),
        "protocol": config.protocol if config.with_lr else None,
        "config": asdict(config),
        "config_hash": config.hash(),
        "weights": {"name": config.weights, "sha256": config.weights_sha256, "testing_only": config.weights.startswith("random-")},
        "versions": versions(),
        "pred_sets": summarize_rows(records, cols),
        "skipped": skipped,
        "unpaired": pairing.unpaired,
        "lr_invalid": lr_invalid_files(records),
        "columns": list(cols),
        "alignment": alignment_note(config, cols),
    }


# ---------------------------------------------------------------------------------------------------- CLI


def _pred_arg(text: str) -> tuple[str | None, str]:
    """``name=DIR`` or ``DIR``."""
    name, sep, path = text.partition("=")
    if sep and name and not os.path.exists(text) and "/" not in name:
        return name, path
    return None, text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gapeval score``."""
    parser.add_argument(
        "--pred",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="folder of super-resolved predictions; repeat for several models (named by folder or NAME)",
    )
    parser.add_argument(
        "--target", required=True, metavar="DIR", help="folder of high-resolution targets (paired by relative path and stem)"
    )
    parser.add_argument(
        "--lr", metavar="DIR", help="folder of low-resolution inputs: adds LR-consistency and improvement/omission/hallucination"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder: pairs.csv, summary.json (+ maps/, report.html)")
    parser.add_argument("--report", action="store_true", help="write report.html and report.md with plots and best/worst image grids")
    parser.add_argument("--maps", action="store_true", help="write georeferenced LPIPS-Sat maps to OUT/maps/<set>/<key>.tif")
    parser.add_argument("--resume", action="store_true", help="skip pairs already in OUT/pairs.csv with the same configuration")
    parser.add_argument("--overwrite", action="store_true", help="start over even if OUT/pairs.csv exists")
    parser.add_argument("--workers", type=int_at_least(1), default=1, help="scenes scored in parallel threads (default 1)")
    parser.add_argument("--device", type=device, default="auto", help="torch device for LPIPS-Sat: auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument(
        "--weights",
        default=DEFAULT_NAME,
        help=f"LPIPS-Sat weights: registry name or .safetensors path (default {DEFAULT_NAME}); "
        f"'{RANDOM_WEIGHTS}' = tiny random network, for testing only",
    )
    for role in ("pred", "target", "lr"):
        parser.add_argument(
            f"--{role}-bands",
            metavar="ORDER",
            help=f"band order of the {role} files: preset (s2-rgbn, s2-l1c-13, planetscope-4b, planetscope-8b, naip) or names like B04,B03,B02,B08",
        )
        parser.add_argument(
            f"--{role}-scale",
            type=positive_float,
            metavar="S",
            help=f"divide {role} values by S to get reflectance (10000 for Sentinel-2/PlanetScope DN); default: the files' scale metadata",
        )
    parser.add_argument(
        "--resample", choices=RESAMPLING_METHODS, help="resample predictions onto the target grid when grids differ (else an error)"
    )
    parser.add_argument(
        "--invalid-pred",
        choices=INVALID_PRED_POLICIES,
        default="fail",
        help="a prediction with NaN/inf/nodata pixels where the target is valid: fail its pair (default, exit 3) or "
        "mask them (score only its valid pixels)",
    )
    parser.add_argument(
        "--strict-bands", action="store_true", help="refuse files without band names instead of assuming the metric's band order"
    )
    parser.add_argument("--allow-missing", action="store_true", help="score only complete pairs and list the unpaired files")
    parser.add_argument("--glob", metavar="PATTERN", help="only files whose relative path matches this glob (e.g. '*.tif')")
    parser.add_argument("--data-range", type=positive_float, default=1.0, help="data range for PSNR/SSIM (default 1.0, reflectance)")
    parser.add_argument("--sr-factor", type=ratio_above_one, help="LR/HR pixel-size ratio for ERGAS when --lr is not given (e.g. 4)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="gapeval",
        help="LR-consistency and improvement/omission/hallucination columns (needs --lr): gapeval's own (default) or "
        "opensr-test 1.3.3's default Metrics().compute, for comparison with published opensr-test tables (docs/metrics.md)",
    )
    parser.add_argument(
        "--align",
        choices=ALIGN_MODES,
        default="none",
        help="resample each target onto its prediction first, per window (cross-sensor targets; never for synthetic pairs, "
        "where misregistration is the model's error): sub-pixel shift or shift+affine (default none; docs/metrics.md)",
    )
    parser.add_argument(
        "--harmonize",
        choices=HARMONIZE_MODES,
        default="none",
        help="map each target's radiometry onto its prediction first: per-band linear fit or histogram matching (default none)",
    )
    parser.add_argument(
        "--max-shift", type=positive_float, default=DEFAULT_MAX_SHIFT, help=f"pairs misaligned by more pixels are listed as not alignable (default {DEFAULT_MAX_SHIFT:g})"
    )
    parser.add_argument("--report-raw", action="store_true", help="with --align/--harmonize: also report the unaligned values (raw_* columns)")
    parser.add_argument("--tile", type=number(int, MIN_SIZE, multiple_of=ScoreConfig.patch), default=DEFAULT_TILE, help=f"window/tile size in pixels (default {DEFAULT_TILE})")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="LPIPS-Sat tiles per network call (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="hide the stage lines and progress bars")
    parser.add_argument("--shard", type=shards.parse_shard, metavar="K/N",
                        help="score only shard K of N (scenes split by key hash); combine the N folders with gapeval merge")
    parser.add_argument("--dist-timeout", type=positive_float, default=86400.0, metavar="S",
                        help="under torchrun: seconds the ranks wait for each other before rank 0 merges (default 86400)")


def run(args: argparse.Namespace) -> int:
    """Run ``gapeval score`` from parsed arguments; prints a short table. Exit 0 (2: usage), or raises an LPIPSSatError."""
    if args.protocol == "opensr-test" and not args.lr:
        print("gapeval score: error: --protocol opensr-test needs --lr DIR (every opensr-test value compares SR with LR)", file=sys.stderr)
        return EXIT_USAGE
    preds: dict[str, str] = {}
    for text in args.pred:
        name, path = _pred_arg(text)
        name = name or Path(path.rstrip("/")).name
        if name in preds:
            raise InputError(f"--pred {text}: a prediction set named {name!r} was given twice; use NAME=DIR")
        preds[name] = path
    dist = shards.distributed_env()
    out, shard, device, report = args.out, args.shard, args.device, args.report
    if dist is not None:
        if args.shard is not None:
            print("gapeval score: error: under torchrun the shard comes from RANK and WORLD_SIZE; drop --shard", file=sys.stderr)
            return EXIT_USAGE
        rank, world, local = dist
        shards.check_merge_target(args.out, args.overwrite or args.resume)
        shard, out, report = (rank + 1, world), shards.shard_dir(args.out, rank + 1, world), False
        if device == "auto":
            import torch

            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    result = score(
        preds,
        args.target,
        lr=args.lr,
        out=out,
        metric=args.weights,
        pred_bands=args.pred_bands,
        target_bands=args.target_bands,
        lr_bands=args.lr_bands,
        pred_scale=args.pred_scale,
        target_scale=args.target_scale,
        lr_scale=args.lr_scale,
        data_range=args.data_range,
        resample=args.resample,
        tile=args.tile,
        batch_size=args.batch_size,
        sr_factor=args.sr_factor,
        pattern=args.glob,
        allow_missing=args.allow_missing,
        maps=args.maps,
        report=report,
        resume=args.resume,
        overwrite=args.overwrite,
        strict_bands=args.strict_bands,
        invalid_pred=args.invalid_pred,
        workers=args.workers,
        device=device,
        progress=not args.no_progress and (dist is None or dist[0] == 0),
        protocol=args.protocol,
        align=args.align,
        harmonize=args.harmonize,
        max_shift=args.max_shift,
        report_raw=args.report_raw,
        shard=shard,
    )
    summary = result.summary
    if dist is not None:
        shards.barrier(args.dist_timeout)
        if dist[0] != 0:
            print(f"rank {dist[0]}: shard {shard[0]}/{shard[1]} scored into {out}; rank 0 merges")
            shards.finish_distributed()
            return 0
        parts = [shards.shard_dir(args.out, k, dist[1]) for k in range(1, dist[1] + 1)]
        metric = shards.recorded_metric(summary, device) if args.report else None
        summary = shards.merge_results(parts, args.out, overwrite=True, report=args.report, metric=metric)
        shards.finish_distributed()
    print(format_table(summary))
    if not summary["pred_sets"]:
        print(f"shard {shard[0]}/{shard[1]} holds none of these scenes" if shard else "no pairs were scored")
    if summary["weights"]["testing_only"]:
        print(f"note: weights {summary['weights']['name']!r} are a random network for testing; LPIPS-Sat values are not meaningful")
    for item in summary["skipped"]:
        print(f"{item['status']} {item['pred_set']}/{item['key']}: {item['reason']}")
    for label, keys in summary["unpaired"].items():
        print(f"unpaired ({label}): {len(keys)} file(s), e.g. {', '.join(keys[:5])}")
    _warn(result)
    print(
        f"wrote {Path(args.out) / PAIRS_CSV} and {Path(args.out) / SUMMARY_JSON}"
        + (f" and {Path(args.out) / 'report.html'}" if args.report else "")
    )
    failed = [s for s in summary["skipped"] if s["status"] in ("failed", "not_alignable")]
    if failed:
        print(f"gapeval score: {len(failed)} pair(s) failed or were not alignable (listed above); the others were scored (exit 3)", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _warn(result: ScoreResult) -> None:
    """Console warnings (stderr) about what the numbers rest on: assumed band orders, invalid LR and prediction pixels."""
    for role, item in result.summary["inputs"]["assumed_band_order"].items():
        files = item["files"]
        print(
            f"warning: {len(files)} {role} file(s) have no band names; their bands were assumed to be {','.join(item['order'])} "
            f"(e.g. {files[0]}; recorded in summary.json). Declare them with --{role}-bands, or refuse them with --strict-bands",
            file=sys.stderr,
        )
    for path, item in result.summary.get("lr_invalid", {}).items():
        print(
            f"warning: {path}: {item['invalid_px']} LR pixels ({item['invalid_fraction']:.2%}) are invalid (NaN/inf/nodata); the "
            f"LR-consistency metrics of scene {item['key']!r} leave them out (columns lr_invalid_px, lr_invalid_fraction; "
            "summary.json lr_invalid)",
            file=sys.stderr,
        )
    holes = [r for r in result.records if r["pred_invalid_fraction"] > 0]
    if holes:
        worst = max(holes, key=lambda r: r["pred_invalid_fraction"])
        print(
            f"note: {len(holes)} pair(s) had invalid prediction pixels (NaN/inf/nodata) where the target is valid; worst "
            f"{worst['pred_set']}/{worst['key']}: {worst['pred_invalid_fraction']:.2%} (column pred_invalid_fraction)",
            file=sys.stderr,
        )


__all__ = [
    "ScoreConfig",
    "ScoreResult",
    "add_arguments",
    "format_table",
    "load_metric",
    "run",
    "score",
]


class _CallableModule(types.ModuleType):
    """Makes ``gapeval.score(pred, target, ...)`` call :func:`score` while ``gapeval.score`` stays this module
    (so ``from gapeval.score import ...`` and the CLI's ``add_arguments``/``run`` keep working)."""

    def __call__(self, *args: Any, **kwargs: Any) -> ScoreResult:
        return score(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
