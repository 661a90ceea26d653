"""Before any pixel is read: check each scene's headers (bands, scale, size, grids) and decide which pairs need
scoring (a resumed run skips pairs already scored with this configuration and unchanged files)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapeval.folders import Pairing
from gapeval.grids import Grid, check_same_grid, grid_of, lr_ratio
from gapeval.metrics.opensr import check_scale
from gapeval.reflectance import was_scaled
from gapeval.scoring.config import ScoreConfig
from gapeval.sources import RasterSource
from lpips_sat.bands import order_assumed, select_bands
from lpips_sat.errors import InputError
from lpips_sat.metric import MIN_SIZE
from lpips_sat.raster import RasterInfo, band_gain_offset, is_virtual, path_text, raster_info
from lpips_sat.registry import sha256_file


@dataclass
class SceneInput:
    """One file of a scene, opened lazily: its windowed source, sha256, and whether it is resampled onto the target."""

    source: RasterSource
    sha256: str
    flag: str  # option that sets this file's scale, quoted in errors
    warp: bool = False
    scaled: bool = False  # values converted by a scale (explicit, or the file's own scale/offset metadata)


@dataclass
class ScenePlan:
    """One target with the predictions still to score and its optional LR input, checked and ready to read."""

    key: str
    target: SceneInput
    preds: dict[str, SceneInput]
    lr: SceneInput | None = None
    ratio: float | None = None  # LR pixel size / target pixel size


class FileHashes:
    """sha256 and headers of files, each read once per run."""

    def __init__(self) -> None:
        self._done: dict[Path, str] = {}
        self._info: dict[Path, RasterInfo] = {}

    def __call__(self, path: Path) -> str:
        """sha256 of a local file; ``""`` for a file on a GDAL virtual file system (hashing would download all of it)."""
        if path not in self._done:
            self._done[path] = "" if is_virtual(path) else sha256_file(path)
        return self._done[path]

    def info(self, path: Path) -> RasterInfo:
        if path not in self._info:
            self._info[path] = raster_info(path)
        return self._info[path]


def _role_options(config: ScoreConfig, role: str) -> tuple[str | None, float | None]:
    """The declared band order and scale of one role (``pred``, ``target``, ``lr``)."""
    return {
        "pred": (config.pred_bands, config.pred_scale),
        "target": (config.target_bands, config.target_scale),
        "lr": (config.lr_bands, config.lr_scale),
    }[role]


def _make_input(path: Path, config: ScoreConfig, role: str, target: Grid | None, hashes: FileHashes) -> tuple[SceneInput, Grid]:
    info = hashes.info(path)
    declared, scale = _role_options(config, role)
    bands = select_bands(info, declared, config.bands, f"--{role}-bands")
    gain, offset = band_gain_offset(info, bands, scale)
    grid = grid_of(info, target)
    scaled = was_scaled(scale, gain, offset)
    return SceneInput(RasterSource(info, grid, bands, gain, offset), hashes(path), f"--{role}-scale", scaled=scaled), grid


def plan_scene(
    key: str, target: Path, preds: Mapping[str, Path], lr: Path | None, config: ScoreConfig, hashes: FileHashes | None = None
) -> ScenePlan:
    """Check one scene's headers (bands, scale, size, grids) and build its :class:`ScenePlan`.

    Raises:
        InputError: wrong band count/order, image too small, grids that differ without ``resample``, LR extent.
    """
    hashes = hashes or FileHashes()
    tin, tgrid = _make_input(target, config, "target", None, hashes)
    if min(tgrid.height, tgrid.width) < MIN_SIZE:
        raise InputError(f"{target}: {tgrid.width}x{tgrid.height} px is smaller than LPIPS-Sat's minimum of {MIN_SIZE}x{MIN_SIZE}")
    plan = ScenePlan(key, tin, {})
    for name, path in preds.items():
        pin, pgrid = _make_input(path, config, "pred", tgrid, hashes)
        pin.warp = check_same_grid(pgrid, tgrid, path, target, config.resample)
        plan.preds[name] = pin
    if lr is not None:
        lin, lgrid = _make_input(lr, config, "lr", tgrid, hashes)
        plan.lr, plan.ratio = lin, lr_ratio(lgrid, tgrid, lr, target)
    check_protocol(plan, config)
    return plan


def check_protocol(plan: ScenePlan, config: ScoreConfig) -> None:
    """Grid conditions of ``--protocol opensr-test``: an integer LR/HR ratio dividing its border mask, a target whose
    size is a multiple of it, and windows (``--tile``) on whole LR pixels.

    Raises:
        InputError: naming the LR and target files.
    """
    if config.protocol != "opensr-test" or plan.lr is None or plan.ratio is None:
        return
    where = f"{plan.lr.source.path} and {plan.target.source.path}"
    scale = check_scale(plan.ratio, where)
    grid, lgrid = plan.target.source.grid, plan.lr.source.grid
    if (grid.height, grid.width) != (scale * lgrid.height, scale * lgrid.width) or config.tile % scale:
        raise InputError(
            f"{where}: --protocol opensr-test needs the target ({grid.width}x{grid.height} px) to be exactly x{scale} the LR "
            f"({lgrid.width}x{lgrid.height} px) and --tile ({config.tile}) a multiple of {scale}"
        )


def _unchanged(row: Mapping[str, Any], pred: Path, target: Path, lr: Path | None, hashes: FileHashes) -> bool:
    """Whether a scored row's input files still have the sha256 it recorded."""
    return (
        row["pred_sha256"] == hashes(pred)
        and row["target_sha256"] == hashes(target)
        and row["lr_sha256"] == (hashes(lr) if lr else "")
    )


def plan_pairs(
    pairing: Pairing,
    sets: Iterable[str],
    config: ScoreConfig,
    done: Mapping[tuple[str, str], Mapping[str, Any]],
    hashes: FileHashes,
    *,
    progress: bool = False,
) -> tuple[list[ScenePlan], set[tuple[str, str]]]:
    """Plans of the scenes with pairs to score, and the ``(set, key)`` of scored rows whose files changed (``stale``).

    A pair in ``done`` is skipped when its files are unchanged; otherwise it is scored again. ``progress``: a bar
    (stderr) when there are 100 scenes or more (headers are read and files hashed here).
    """
    from tqdm import tqdm

    sets = list(sets)
    plans: list[ScenePlan] = []
    stale: set[tuple[str, str]] = set()
    keys = pairing.keys
    for key in tqdm(keys, unit="scene", desc="gapeval score: checking", disable=not progress or len(keys) < 100):
        target = pairing.targets[key]
        lr = pairing.lr.get(key) if pairing.lr else None
        todo = {}
        for name in sets:
            path = pairing.preds[name].get(key)
            if path is None:
                continue
            row = done.get((name, key))
            if row is not None:
                if _unchanged(row, path, target, lr, hashes):
                    continue
                stale.add((name, key))
            todo[name] = path
        if todo:
            plans.append(plan_scene(key, target, todo, lr, config, hashes))
    return plans, stale


def assumed_band_orders(pairing: Pairing, sets: Iterable[str], config: ScoreConfig, hashes: FileHashes, *, strict: bool) -> dict[str, Any]:
    """Files of the run whose band order is assumed (no ``--<role>-bands``, no band names, the metric's band count),
    per role: ``{role: {"order": [...], "files": [...]}}`` (recorded in ``summary.json``; the CLI warns).

    Raises:
        InputError: ``strict`` and some file's order would be assumed (the message lists them).
    """
    files: dict[str, list[Path]] = {"target": [pairing.targets[k] for k in pairing.keys]}
    files["pred"] = [p for name in sets for k, p in sorted(pairing.preds[name].items())]
    if pairing.lr:
        files["lr"] = [p for k, p in sorted(pairing.lr.items()) if k in pairing.targets]
    out: dict[str, Any] = {}
    for role, paths in files.items():
        declared, _ = _role_options(config, role)
        assumed = [path_text(p) for p in paths if order_assumed(info := hashes.info(p), declared) and info.count == len(config.bands)]
        if assumed:
            out[role] = {"order": list(config.bands), "files": assumed}
    if strict and out:
        listed = [f"{f} ({role})" for role, v in out.items() for f in v["files"]]
        raise InputError(
            f"--strict-bands: {len(listed)} file(s) have no band names, so their band order would be assumed: "
            f"{', '.join(listed[:5])}{' ...' if len(listed) > 5 else ''}; declare it with --pred-bands/--target-bands/--lr-bands"
        )
    return out
