"""``lpips-sat`` command line: compare two images, describe the shipped weights, or (re)train them.

    lpips-sat compare a.tif b.tif [--bands ...] [--input-range dn|reflectance] [--weights ...] [--spatial-out map.tif]
    lpips-sat info [--weights NAME|FILE] [--json]
    lpips-sat pretrain ...      (lpips_sat.train.pretrain)
    lpips-sat calibrate ...     (lpips_sat.train.calibrate)

Exit codes (the same for ``gapeval``; docs/reliability.md): 0 success, 1 data error (a file, value or weights file is
wrong, or an output cannot be written; the message names it), 2 usage error (a bad option or value, an unavailable
device), 3 partial (some items failed, the others were written), 130 interrupted (Ctrl-C; finished outputs are kept).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lpips_sat.backbones import TAPS
from lpips_sat.bands import PRESETS, band_indices, band_order, order_assumed
from lpips_sat.errors import InputError, LPIPSSatError, MissingFileError, PartialFailure, WeightsError
from lpips_sat.options import device, positive_float, resolve_device
from lpips_sat.raster import Raster, band_gain_offset, raster_info, read_raster, write_npy, write_raster
from lpips_sat.register import REGISTER_MODES

log = logging.getLogger(__name__)

#: Sub-commands implemented by the training package: name -> (module, one-line help). Imported on use only.
TRAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("lpips_sat.train.pretrain", "self-supervised pretraining of the Sentinel-2 backbone on GeoTIFF folders"),
    "calibrate": ("lpips_sat.train.calibrate", "train the calibration heads on 2AFC judgments (LPIPS recipe)"),
}

# ------------------------------------------------------------------------------------------------ reading images
def read_image(path: str | Path, *, scale: float | None = None) -> tuple[np.ndarray, Raster]:
    """Read a GeoTIFF, PNG/JPEG or ``.npy`` file as (bands, rows, cols) float32 plus its :class:`lpips_sat.raster.Raster`.

    ``scale`` divides the pixel values (e.g. 10000 for Sentinel-2 DN); without it, a GeoTIFF's own band
    scale/offset metadata is applied (as ``gapeval score`` does). Pixels flagged invalid (nodata in every
    band, NaN/inf) are refused: the metric has no masked mode, and filling them silently would change the distance.
    Raises:
        MissingFileError: no such file. InputError: unreadable file or invalid pixels.
        MissingExtraError: the optional reader (rasterio / Pillow) is not installed.
    """
    path = Path(path)
    raster = read_raster(path, scale=scale)
    if scale is None:
        gain, offset = band_gain_offset(raster_info(path), list(range(raster.data.shape[0])), None)
        raster.data = raster.data * gain[:, None, None] + offset[:, None, None]
    invalid = int((~raster.valid).sum())
    if invalid:
        raise InputError(f"{path}: {invalid} of {raster.valid.size} pixels are nodata/NaN/inf; crop or fill them before comparing")
    return raster.data, raster


def file_bands(raster: Raster, declared: str | None, model_bands: Sequence[str]) -> tuple[str | None, ...]:
    """The band order of a file: ``--bands`` if given, else the file's band descriptions, else the model's order.

    The model's own order is assumed only when the file has exactly the model's band count (a console warning);
    anything else must be declared (:func:`lpips_sat.bands.band_order`).
    """
    declared = declared or None
    bands = band_order(raster, declared, model_bands, "--bands")
    if order_assumed(raster, declared):  # an assumption changes the distance if wrong: say it on the console
        print(f"lpips-sat compare: warning: {raster.path} has no band names; assuming {','.join(map(str, bands))} "
              "(declare the order with --bands)", file=sys.stderr)
    log.info("%s: bands %s", raster.path, list(bands))
    return bands


def _same_geometry(ra: Any, rb: Any) -> bool:
    if ra.transform is None or rb.transform is None:
        return True
    return ra.crs == rb.crs and ra.transform.almost_equals(rb.transform)


def write_map(path: str | Path, dist_map: np.ndarray, like: Raster) -> Path:
    """Write an (H, W) distance map as a single-band GeoTIFF (geometry of ``like``) or ``.npy``, atomically."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return write_npy(path, dist_map)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"--spatial-out {path}: use a .tif or .npy file name")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")  # PNG/.npy inputs carry no geometry
        return write_raster(path, dist_map[None].astype(np.float32), transform=like.transform, crs=like.crs,
                            tags={"LPIPS_SAT": "per-pixel distance map (mean = distance)"}, descriptions=("lpips_sat",))


# ------------------------------------------------------------------------------------------------ compare
def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="first image (GeoTIFF, PNG/JPEG or .npy (bands, rows, cols)), e.g. the SR output")
    p.add_argument("b", help="second image, same size and bands, e.g. the high-resolution target")
    p.add_argument("--bands", help="band order of both files: a preset (" + ", ".join(sorted(PRESETS)) + ") or names "
                   "such as B04,B03,B02,B08 / red,green,blue,nir (default: the GeoTIFF band descriptions, else the model's order)")
    p.add_argument("--input-range", choices=("reflectance", "dn"), default="reflectance",
                   help="pixel values are reflectance (DN / 10000) or Sentinel-2 digital numbers (default: reflectance)")
    p.add_argument("--scale", type=positive_float, help="divide pixel values by this first (e.g. for 8-bit PNGs); excludes --input-range dn")
    p.add_argument("--weights", default=None, help="registry name, .safetensors file or model folder from save_pretrained / calibrate (default: the shipped lpips-sat-s2-rn18)")
    p.add_argument("--spatial-out", help="also write the per-pixel distance map (.tif with the geometry of A, or .npy)")
    p.add_argument("--register", choices=REGISTER_MODES, default=None,
                   help="translation: remove the global shift of A against B before the distance; none: pixel by pixel "
                        "(default: the weights' own form, translation for v5)")
    p.add_argument("--max-shift", type=positive_float, default=None, help="largest shift registered, px (default: the weights', else 3)")
    p.add_argument("--device", type=device, default="cpu", help="torch device: cpu, cuda, cuda:N, mps or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run_compare(args: argparse.Namespace) -> int:
    """Distance between two image files (the whole image in one pass)."""
    from lpips_sat.metric import LPIPSSat
    from lpips_sat.registry import DEFAULT_NAME

    if args.scale is not None and args.input_range == "dn":
        raise InputError("--scale and --input-range dn both rescale the pixels; use one of them")
    a_arr, ra = read_image(args.a, scale=args.scale)
    b_arr, rb = read_image(args.b, scale=args.scale)
    if a_arr.shape[1:] != b_arr.shape[1:]:
        raise InputError(f"{args.a} is {a_arr.shape[1]} x {a_arr.shape[2]} px but {args.b} is {b_arr.shape[1]} x {b_arr.shape[2]} px; "
                         "resample/crop them to one grid first")
    if not _same_geometry(ra, rb):
        print(f"lpips-sat compare: warning: {args.a} and {args.b} have different geotransforms/CRS; comparing pixel by pixel", file=sys.stderr)
    args.device = resolve_device(args.device)
    metric = LPIPSSat(args.weights or DEFAULT_NAME, input_range=args.input_range, register=args.register, max_shift=args.max_shift).to(args.device)
    tensors, used = [], []
    for arr, raster in ((a_arr, ra), (b_arr, rb)):
        bands = file_bands(raster, args.bands, metric.model_bands)
        try:
            order = band_indices(bands, metric.model_bands)
        except InputError as exc:
            raise InputError(f"{raster.path}: {exc}") from exc
        tensors.append(torch.from_numpy(np.ascontiguousarray(arr[order]))[None].to(args.device))
        used.append(bands)
    try:
        with torch.no_grad():
            fa, fb, shift = metric.pair_features(tensors[0], tensors[1], names=(str(args.a), str(args.b)))  # registered if the weights register
            total, parts = metric.distance(fa, fb)
            dist_map = metric.distance(fa, fb, spatial=True, size=tuple(a_arr.shape[-2:]))[0] if args.spatial_out else None
    except InputError as exc:
        if "input_range" not in str(exc):
            raise
        raise InputError(f"{exc} (command line: --input-range dn|reflectance, or --scale S to divide the pixel values)") from exc
    result = {"a": str(args.a), "b": str(args.b), "distance": float(total[0]), "weights": metric.name, "sha256": metric.sha256,
              "bands_a": list(used[0]), "bands_b": list(used[1]), "input_range": args.input_range, "scale": args.scale,
              "per_layer": {name: float(p[0]) for name, p in zip(TAPS, parts)},
              "registered": metric.registers, "shift_px": [round(float(v), 4) for v in shift[0]]}
    if dist_map is not None:
        result["spatial_out"] = str(write_map(args.spatial_out, dist_map[0, 0].cpu().numpy(), ra))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['distance']:.6f}")
        print(f"  weights {metric.name}; bands {','.join(map(str, used[0]))} / {','.join(map(str, used[1]))} -> model {','.join(metric.model_bands)}; "
              f"input {args.input_range}{f' / {args.scale:g}' if args.scale else ''}; shift of A against B "
              f"({result['shift_px'][0]:+.2f}, {result['shift_px'][1]:+.2f}) px {'removed' if metric.registers else 'not removed'}",
              file=sys.stderr)
        if dist_map is not None:
            print(f"  distance map written to {result['spatial_out']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ info
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="show one registry entry, a .safetensors file or a model folder in detail (default: all entries)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _header_metadata(path: Path) -> dict[str, str]:
    """Metadata of a safetensors file, read from its header only (no tensors loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def describe_file(path: Path, expected_sha256: str | None) -> dict[str, Any]:
    """sha256 check result, size and header metadata of one weights file."""
    from lpips_sat.registry import sha256_file

    if not path.is_file():
        return {"file": str(path), "exists": False, "sha256_ok": False}
    actual = sha256_file(path)
    return {"file": str(path), "exists": True, "bytes": path.stat().st_size, "sha256": actual, "expected_sha256": expected_sha256,
            "sha256_ok": None if expected_sha256 is None else actual == expected_sha256, "metadata": _header_metadata(path)}


def info_records(only: str | None = None) -> list[dict[str, Any]]:
    """One record per registry entry (or for the named entry / file): what ``lpips-sat info`` shows."""
    from lpips_sat.registry import REGISTRY, get_entry, weights_dir

    if only and Path(only).is_dir():  # a model folder (save_pretrained / calibrate): its weights file against its config
        from lpips_sat.hub import WEIGHTS_NAME, read_config

        config = read_config(Path(only))
        return [{"name": config["name"] or Path(only).name, "shipped": False, "folder": only, "config": config,
                 **describe_file(Path(only) / WEIGHTS_NAME, config["sha256"])}]
    if only and (only.endswith(".safetensors") or Path(only).is_file()):
        path = Path(only)
        if not path.is_file():
            raise MissingFileError(f"Weights file {path} does not exist")
        return [{"name": path.name, "shipped": False, **describe_file(path, None)}]
    get_entry(only or next(iter(REGISTRY)))  # any lookup registers the shipped weights listed in weights/index.json
    entries = [get_entry(only)] if only else list(REGISTRY.values())
    records = []
    for entry in entries:
        record: dict[str, Any] = {"name": entry.name, "arch": entry.arch, "bands": list(entry.bands), "mean": list(entry.mean),
                                  "std": list(entry.std), "heads": entry.heads, "source": entry.source, "licence": entry.licence,
                                  "ssl_method": entry.ssl_method, "description": entry.description, "shipped": entry.file is not None}
        if entry.file:
            record.update(describe_file(weights_dir() / entry.file, entry.sha256))
        else:
            record.update({"hub_id": entry.hub_id, "hub_filename": entry.hub_filename})
        records.append(record)
    return records


#: Metadata keys shown first (the rest follows alphabetically); long values are shortened in text output.
_META_FIRST = ("arch", "bands", "taps", "mean", "std", "normalization", "input_range", "width_div", "training_data", "data_sha256", "recipe", "seed")


def _print_record(rec: dict[str, Any]) -> None:
    print(f"{rec['name']}")
    if "arch" in rec:
        print(f"  arch {rec['arch']}; bands {','.join(rec['bands'])}; heads {rec['heads']}")
        print(f"  normalisation (reflectance - mean) / std: mean {rec['mean']} std {rec['std']}")
        print(f"  source {rec['source'] or '-'}; licence {rec['licence'] or '-'}; method {rec['ssl_method'] or '-'}")
    if rec.get("shipped") or "file" in rec:
        if not rec.get("exists"):
            print(f"  file {rec['file']}: MISSING")
        else:
            check = {True: "OK", False: "MISMATCH (file corrupt or modified)", None: "no registered sha256"}[rec["sha256_ok"]]
            print(f"  file {rec['file']} ({rec['bytes'] / 1e6:.1f} MB)")
            print(f"  sha256 {rec['sha256']}: {check}")
            meta = rec.get("metadata", {})
            for key in [k for k in _META_FIRST if k in meta] + sorted(k for k in meta if k not in _META_FIRST):
                value = meta[key]
                print(f"  {key}: {value if len(value) <= 160 else value[:157] + '...'}")
    else:
        print(f"  external: hub {rec.get('hub_id') or '(none)'} file {rec.get('hub_filename') or '-'}; load with LPIPSSat.from_backbone(local_path)")


def run_info(args: argparse.Namespace) -> int:
    """Print registry entries; exit 1 if a shipped file is missing or fails its sha256 check."""
    from lpips_sat.registry import weights_dir

    records = info_records(args.weights)
    bad = [r["name"] for r in records if (r.get("shipped") or "folder" in r) and not r.get("sha256_ok")]
    if args.json:
        print(json.dumps({"records": records, "failed": bad}, indent=2))
    else:
        try:
            folder = str(weights_dir())
        except MissingFileError:
            folder = "(none)"
        print(f"weights folder: {folder}")
        if not any(r.get("shipped") for r in records) and not args.weights:
            print("  no shipped weights registered (weights/index.json absent or empty)")
        for rec in records:
            _print_record(rec)
    if bad:
        what = "model folder" if args.weights and Path(args.weights).is_dir() else "shipped weights"
        print(f"lpips-sat info: error: {what} failed their sha256 check: {', '.join(bad)}; reinstall lpips-sat or re-save the folder", file=sys.stderr)
        return EXIT_DATA
    return 0


# ------------------------------------------------------------------------------------------------ parser
def add_module_commands(
    sub: argparse._SubParsersAction, commands: dict[str, tuple[str, str]], own_packages: tuple[str, ...], extra: str = "eval"
) -> None:
    """Add one sub-command per module exposing ``add_arguments(parser)`` and ``run(args) -> int``.

    A module of ``own_packages`` that is missing (or lacks those functions) turns into a command that fails
    with a clear message (exit 2); one whose third-party imports are not installed turns into a command that names
    the optional ``extra`` to install (exit 1), so the other commands and ``--help`` keep working in a base install.
    """
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
            add_arguments, run = mod.add_arguments, mod.run
        except (ModuleNotFoundError, AttributeError) as exc:
            if isinstance(exc, ModuleNotFoundError) and not (exc.name or "").startswith(own_packages):
                missing = (exc.name or "an optional package").split(".")[0]
                p.set_defaults(
                    _unavailable=f"'{name}' needs {missing}, from the [{extra}] extra; install it with: pip install \"lpips-sat[{extra}]\"",
                    _unavailable_code=EXIT_DATA,
                )
                continue
            p.set_defaults(_unavailable=f"'{name}' is not available in this installation ({module}: {exc})")
            continue
        add_arguments(p)
        p.set_defaults(_run=run)


#: Exit codes of every lpips-sat and gapeval command (docs/reliability.md).
EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit code (docs/reliability.md).

    argparse exits 2 itself on usage errors (``SystemExit``); a command returns 0 or :data:`EXIT_PARTIAL`; a
    :class:`PartialFailure` is 3, any other :class:`LPIPSSatError` or an ``OSError`` 1, ``KeyboardInterrupt`` (SIGINT) 130.
    """
    args, extra = parser.parse_known_args(argv)  # an unavailable command's own options must not hide its message
    if extra and not getattr(args, "_unavailable", None):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "_unavailable", None):
        print(f"{parser.prog}: error: {args._unavailable}", file=sys.stderr)
        return getattr(args, "_unavailable_code", EXIT_USAGE)
    try:
        return int(args._run(args) or EXIT_OK)
    except PartialFailure as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    except (LPIPSSatError, OSError) as exc:  # OSError: the file system refused (disk full, permissions, a path that changed)
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted; finished outputs are kept", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The full parser; training sub-commands are imported only to add their arguments."""
    parser = argparse.ArgumentParser(prog="lpips-sat", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="distance between two image files", description=run_compare.__doc__)
    add_compare_arguments(p)
    p.set_defaults(_run=run_compare)
    p = sub.add_parser("info", help="registry entries, shipped weights and their sha256 check", description=run_info.__doc__)
    add_info_arguments(p)
    p.set_defaults(_run=run_info)
    add_module_commands(sub, TRAIN_COMMANDS, ("lpips_sat",), extra="train")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lpips-sat`` script."""
    return dispatch(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
