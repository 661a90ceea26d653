"""The one inference pipeline shared by every adapter: read -> bands -> tiles -> batches -> blend -> write.

For each input GeoTIFF (this process's ``--shard`` of the sorted list):

1. read it with :func:`lpips_sat.raster.read_raster`, check it is georeferenced, select the adapter's bands
   (:func:`lpips_sat.bands.band_order`: ``--bands``, else the file's band descriptions), convert to reflectance
   ``(pixel + offset) / scale`` (``--scale``, else the file's scale metadata; :func:`gapeval.reflectance.check_reflectance`
   refuses digital numbers), fill nodata with the band mean (nodata is masked again on output);
2. cut overlapping tiles (:mod:`gapeval.infer.tiling`), run them through the adapter in batches with one seeded
   generator per tile (seed = sha256 of run seed, file name, tile origin, sample index), halving the batch on
   out-of-memory; each finished tile is cached under ``OUT/.partial/`` so an interrupted run resumes where it stopped;
3. blend, optionally histogram-match each band to the low-resolution input, repeat for ``--samples`` samples
   (streaming mean and variance), mask nodata, append fallback bands for RGB-only models;
4. write float32 Cloud-Optimized GeoTIFFs on the x``scale`` grid (transform scaled, CRS kept), tagged with model,
   checkpoint sha256, sampler settings, seed and package version: ``STEM.tif`` (mean) and, for ``--samples`` > 1,
   ``STEM_std.tif`` (per-pixel sample standard deviation). A file whose outputs exist with the same run
   signature is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine

import gapeval
from gapeval.align import histogram_match
from gapeval.folders import list_images
from gapeval.infer.base import Adapter, is_out_of_memory
from gapeval.infer.checkpoints import CheckpointSource
from gapeval.infer.tiling import Blender, Tile, TileGrid, padded_size, upsample_mask
from gapeval.reflectance import check_not_tiny, check_reflectance, was_scaled
from lpips_sat.atomic import atomic_file, make_folder, remove_stale_temporaries, write_text_atomic
from lpips_sat.bands import band_indices, band_order
from lpips_sat.errors import InputError, LPIPSSatError, MissingFileError, PartialFailure
from lpips_sat.raster import RASTER_SUFFIXES, Raster, band_gain_offset, raster_info, read_raster, write_raster

log = logging.getLogger(__name__)

NIR_FALLBACKS = ("bicubic", "none")
AUTO_BATCH = {"cuda": 16, "cpu": 1}


@dataclass
class InferConfig:
    """Everything ``gapeval infer`` needs besides the adapter (see ``gapeval infer --help`` for each field)."""

    out: Path
    seed: int = 0
    samples: int = 1
    tile: int | None = None
    overlap: int = 16
    batch: int | None = None
    bands: str | None = None
    scale: float | None = None
    offset: float = 0.0
    histogram_match: bool | None = None
    nir_fallback: str = "bicubic"
    overwrite: bool = False
    tile_cache: bool = True


@dataclass
class FileResult:
    """What happened to one input file."""

    input: Path
    output: Path
    std: Path | None
    status: str  # "written" | "skipped"
    tiles_computed: int = 0
    tiles_cached: int = 0


# --------------------------------------------------------------------------------------------------
# Inputs, shards, seeds
# --------------------------------------------------------------------------------------------------

def list_inputs(path: str | Path) -> list[tuple[str, Path]]:
    """``(key, file)`` of a GeoTIFF, or of the GeoTIFFs under a folder (recursive; key = relative path without suffix,
    as :func:`gapeval.folders.list_images` keys them, so outputs pair with targets in ``gapeval score``)."""
    path = Path(path)
    if path.is_file():
        return [(path.stem, path)]
    if not path.exists():
        raise MissingFileError(f"Input {path} does not exist")
    files = sorted((k, p) for k, p in list_images(path).items() if p.suffix.lower() in RASTER_SUFFIXES)
    if not files:
        raise InputError(f"Input folder {path} holds no GeoTIFF (*.tif, *.tiff)")
    return files


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"k/n"`` (0 <= k < n) or ``"auto"`` (``RANK``/``WORLD_SIZE`` set by torchrun or accelerate) -> (k, n)."""
    if text is None:
        return 0, 1
    if text == "auto":
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like k/n (e.g. 0/4) or 'auto', got {text!r}") from None
    if not 0 <= k < n:
        raise InputError(f"--shard {text}: need 0 <= k < n")
    return k, n


def select_shard(files: Sequence[tuple[str, Path]], k: int, n: int) -> list[tuple[str, Path]]:
    """Deterministic split: item ``i`` of the key-sorted list goes to shard ``i mod n``."""
    return sorted(files)[k::n]


def tile_seed(seed: int, key: str, tile: Tile, sample: int) -> int:
    """63-bit seed of one tile of one sample: sha256 of (run seed, file key, tile origin, sample index)."""
    digest = hashlib.sha256(f"{seed}|{key}|{tile.key}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def default_device() -> str:
    """``cuda:LOCAL_RANK`` under torchrun/accelerate, ``cuda`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    return "cpu"


# --------------------------------------------------------------------------------------------------
# Bands and values
# --------------------------------------------------------------------------------------------------

def check_georeferenced(raster: Raster) -> None:
    """Refuse inputs without CRS or geotransform: the outputs must land on a known grid."""
    t = raster.transform
    if raster.crs is None or t is None or (t.a == 1 and t.e == 1 and t.c == 0 and t.f == 0 and t.b == 0 and t.d == 0):
        raise InputError(f"{raster.path}: not georeferenced (no CRS or geotransform); gapeval infer writes outputs on the x-scale grid of the input, "
                         "so assign the georeference first (e.g. gdal_edit.py -a_srs EPSG:… -a_ullr …)")


def fill_invalid(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace nodata pixels by each band's mean over valid pixels (0 if none) so the network sees no outliers."""
    out = data.copy()
    if valid.all():
        return out
    for b in range(out.shape[0]):
        band = out[b]
        fill = float(band[valid].mean()) if valid.any() else 0.0
        band[~valid] = fill
    return out


# --------------------------------------------------------------------------------------------------
# Resume: finished files and cached tiles
# --------------------------------------------------------------------------------------------------

class TileCache:
    """Finished tiles of one file (``OUT/.partial/STEM/s{k}_y{y}_x{x}.npy``), valid for one run signature."""

    def __init__(self, folder: Path, run_id: str, enabled: bool = True) -> None:
        self.folder, self.run_id, self.enabled = folder, run_id, enabled
        if not enabled:
            return
        stamp = folder / "run.json"
        if folder.is_dir():
            previous = json.loads(stamp.read_text()).get("run") if stamp.is_file() else None
            if previous != run_id:
                log.info("%s: discarding cached tiles of a different run", folder)
                shutil.rmtree(folder)
        make_folder(folder, "tile cache")
        write_text_atomic(stamp, json.dumps({"run": run_id}))

    def _path(self, tile: Tile, sample: int) -> Path:
        return self.folder / f"s{sample}_{tile.key}.npy"

    def load(self, tile: Tile, sample: int) -> np.ndarray | None:
        if not self.enabled:
            return None
        path = self._path(tile, sample)
        return np.load(path) if path.is_file() else None

    def save(self, tile: Tile, sample: int, out: np.ndarray) -> None:
        if not self.enabled:
            return
        with atomic_file(self._path(tile, sample)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, out.astype(np.float32, copy=False))

    def clear(self) -> None:
        if self.enabled and self.folder.is_dir():
            shutil.rmtree(self.folder)


def _read_tags(path: Path) -> dict[str, str]:
    import rasterio

    with rasterio.open(path) as ds:
        return dict(ds.tags())


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------

class Pipeline:
    """Runs one adapter over files. ``batch`` shrinks (and stays shrunk) after an out-of-memory error."""

    def __init__(self, adapter: Adapter, source: CheckpointSource, config: InferConfig) -> None:
        self.adapter, self.source, self.config = adapter, source, config
        if config.samples < 1:
            raise InputError(f"--samples must be >= 1, got {config.samples}")
        if config.nir_fallback not in NIR_FALLBACKS:
            raise InputError(f"--nir-fallback must be one of {NIR_FALLBACKS}, got {config.nir_fallback!r}")
        self.tile = config.tile or adapter.default_tile
        if self.tile % adapter.size_multiple:
            raise InputError(f"--tile {self.tile} must be a multiple of {adapter.size_multiple} for {adapter.name}")
        self.batch = config.batch or AUTO_BATCH.get(adapter.device.type, 1)
        self.histogram_match = adapter.histogram_match if config.histogram_match is None else config.histogram_match
        #: Hook for tests and tools: called as ``sample_fn(lr, generators)``; defaults to the adapter.
        self.sample_fn: Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor] = adapter.sample

    # -- signature -------------------------------------------------------------------------------
    def tags(self, path: Path, in_bands: Sequence[str | None], out_bands: Sequence[str], fallback: str) -> dict[str, str]:
        """Output tags; ``gapeval_run`` hashes everything that determines the pixels."""
        c, a = self.config, self.adapter
        tags = {
            "model": a.name, "checkpoint": self.source.spec, "checkpoint_sha256": self.source.sha256, **a.settings(),
            "seed": str(c.seed), "samples": str(c.samples), "tile": str(self.tile), "overlap": str(c.overlap), "precision": a.precision,
            "scale_factor": str(a.scale), "input_scale": "file metadata" if c.scale is None else f"{c.scale:g}", "input_offset": f"{c.offset:g}",
            "input_bands": ",".join(b or "?" for b in in_bands), "bands": ",".join(out_bands), "band_fallback": fallback,
            "histogram_matched": str(self.histogram_match).lower(), "units": "reflectance", "gapeval_version": gapeval.__version__,
        }
        tags["gapeval_run"] = hashlib.sha256(json.dumps(tags, sort_keys=True).encode()).hexdigest()[:16]
        tags.update({"input": path.name, "software": "gapeval infer"})
        return tags

    # -- one file --------------------------------------------------------------------------------
    def process(self, path: Path, key: str | None = None) -> FileResult:
        """Super-resolve one GeoTIFF into ``config.out/KEY.tif`` (skipped when finished outputs of the same run exist)."""
        c, a = self.config, self.adapter
        key = key or path.stem
        out_path = c.out / f"{key}.tif"
        std_path = c.out / f"{key}_std.tif" if c.samples > 1 else None

        info = raster_info(path)
        in_bands = band_order(info, c.bands, a.bands, "--bands")
        try:
            idx = band_indices(in_bands, a.bands)
        except InputError as exc:
            raise InputError(f"{path}: {exc} (set --bands)") from None
        extra = [b for b in ("B08",) if b not in a.bands and b in in_bands]
        fallback_idx = [in_bands.index(b) for b in extra] if c.nir_fallback == "bicubic" else []
        fallback = ";".join(f"{b}:bicubic x{a.scale} of the input (not super-resolved)" for b in extra) if fallback_idx else "none"
        out_bands = list(a.bands) + (extra if fallback_idx else [])
        tags = self.tags(path, in_bands, out_bands, fallback)

        if out_path.exists() and (std_path is None or std_path.exists()):
            old = _read_tags(out_path)
            if old.get("gapeval_run") == tags["gapeval_run"]:
                log.info("%s: finished output %s exists, skipping", path, out_path)
                return FileResult(path, out_path, std_path, "skipped")
            if not c.overwrite:
                raise InputError(f"{out_path} exists from a different run (model {old.get('model')}, seed {old.get('seed')}, checkpoint "
                                 f"{old.get('checkpoint_sha256', '?')[:12]}); pass --overwrite or choose another --out")

        raster = read_raster(path)
        check_georeferenced(raster)
        used = idx + fallback_idx
        gain, off = band_gain_offset(info, used, c.scale)
        data = (raster.data[used] + np.float32(c.offset)) * gain[:, None, None] + off[:, None, None]
        scaled = was_scaled(c.scale, gain, off)
        check_not_tiny(check_reflectance(data, raster.valid, path, "--scale", scaled=scaled), path, "--scale", scaled=scaled)
        if fallback != "none":
            log.warning("%s: %s", path, fallback)
        data = fill_invalid(data, raster.valid)
        lr = data[: len(idx)]
        H, W = raster.shape

        cache = TileCache(c.out / ".partial" / key, tags["gapeval_run"], c.tile_cache)
        mean, m2, computed, cached = self._samples(lr, raster.valid, key, cache)

        s = a.scale
        valid_hr = upsample_mask(raster.valid, s)
        mean[:, ~valid_hr] = np.nan
        transform = raster.transform @ Affine.scale(1.0 / s)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if std_path is not None:
            std = np.sqrt(m2 / (c.samples - 1))  # type: ignore[operator]
            std[:, ~valid_hr] = np.nan
            write_raster(std_path, std.astype(np.float32), transform=transform, crs=raster.crs, nodata=float("nan"),
                         tags={**tags, "kind": f"per-pixel sample standard deviation (ddof=1) over {c.samples} samples"}, descriptions=tuple(a.bands))
        if fallback_idx:
            nir = F.interpolate(torch.from_numpy(data[len(idx):])[None], size=(H * s, W * s), mode="bicubic", align_corners=False)[0].numpy()
            nir[:, ~valid_hr] = np.nan
            mean = np.concatenate([mean, nir.astype(mean.dtype)], axis=0)
        kind = f"mean of {c.samples} samples" if c.samples > 1 else "single sample"
        write_raster(out_path, mean.astype(np.float32), transform=transform, crs=raster.crs, nodata=float("nan"),
                     tags={**tags, "kind": kind}, descriptions=tuple(out_bands))
        cache.clear()
        return FileResult(path, out_path, std_path, "written", computed, cached)

    def _samples(self, lr: np.ndarray, valid: np.ndarray, key: str, cache: TileCache) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """Run every sample over every tile; streaming (Welford) mean and sum of squared deviations."""
        c, a = self.config, self.adapter
        H, W = lr.shape[1:]
        Hp, Wp = padded_size(H, self.tile, a.size_multiple), padded_size(W, self.tile, a.size_multiple)
        padded = np.pad(lr, ((0, 0), (0, Hp - H), (0, Wp - W)), mode="symmetric") if (Hp, Wp) != (H, W) else lr
        valid_p = np.pad(valid, ((0, Hp - H), (0, Wp - W)), constant_values=False)
        grid = TileGrid(Hp, Wp, self.tile, c.overlap, a.scale)
        tiles = [t for t in grid.tiles if valid_p[t.y:t.y + t.h, t.x:t.x + t.w].any()]
        image = torch.from_numpy(np.ascontiguousarray(padded))
        s = a.scale
        mean = m2 = None
        computed = cached = 0
        for k in range(c.samples):
            blender = Blender(grid, len(a.bands))
            todo = []
            for t in tiles:
                out = cache.load(t, k)
                if out is None:
                    todo.append(t)
                else:
                    blender.add(t, out)
                    cached += 1

            def done(t: Tile, out: np.ndarray, k: int = k, blender: Blender = blender) -> None:
                cache.save(t, k, out)
                blender.add(t, out)

            computed += self._run_batches(image, todo, lambda t, k=k: tile_seed(c.seed, key, t, k), done)
            img = blender.result()[:, : H * s, : W * s]
            out_valid = upsample_mask(valid, s) & np.isfinite(img).all(axis=0)
            if self.histogram_match and out_valid.any() and valid.any():
                img = histogram_match(img, lr, image_valid=out_valid, reference_valid=valid)
            if c.samples == 1:
                return img, None, computed, cached
            img64 = img.astype(np.float64)
            if mean is None:
                mean, m2 = img64, np.zeros_like(img64)
            else:
                delta = img64 - mean
                mean += delta / (k + 1)
                m2 += delta * (img64 - mean)
        assert mean is not None
        return mean, m2, computed, cached

    def _run_batches(self, image: torch.Tensor, tiles: Sequence[Tile], seed_of: Callable[[Tile], int],
                     done: Callable[[Tile, np.ndarray], None]) -> int:
        """Run ``tiles`` in batches; on out-of-memory halve the batch and retry the same tiles (same seeds)."""
        i = 0
        while i < len(tiles):
            chunk = tiles[i:i + self.batch]
            lr = torch.stack([image[:, t.y:t.y + t.h, t.x:t.x + t.w] for t in chunk])
            generators = [torch.Generator().manual_seed(seed_of(t)) for t in chunk]
            try:
                out = self.sample_fn(lr.to(self.adapter.device), generators)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if len(chunk) == 1:
                    raise InputError(f"{self.adapter.name}: out of memory even with one {self.tile} px tile per batch; "
                                     "use a smaller --tile or --precision bf16/fp16") from exc
                self.batch = max(1, len(chunk) // 2)  # halve what failed (the batch may exceed the tiles left)
                log.warning("out of memory with %d tiles per batch; retrying with %d", len(chunk), self.batch)
                if self.adapter.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            out_np = out.detach().float().cpu().numpy()
            for t, o in zip(chunk, out_np):
                done(t, o)
            i += len(chunk)
        return len(tiles)


def run(adapter: Adapter, source: CheckpointSource, config: InferConfig, files: Sequence[tuple[str, Path] | Path],
        progress: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """Process ``files`` (``(key, path)`` pairs or paths) in order; a file that fails with a data error is reported and the others continue."""
    pipe = Pipeline(adapter, source, config)
    make_folder(config.out, "--out")
    remove_stale_temporaries(config.out)  # outputs and tile cache of a killed run (shards running now keep theirs)
    results, errors = [], []
    items = [(f.stem, f) if isinstance(f, Path) else f for f in files]
    for key, path in items:
        try:
            result = pipe.process(path, key)
        except LPIPSSatError as exc:
            if len(items) == 1:
                raise
            log.error("%s", exc)
            errors.append(f"{path.name}: {exc}")
            continue
        results.append(result)
        if progress:
            progress(result)
    if errors:
        error = PartialFailure if results else InputError  # exit 3 when some files were written, else 1
        raise error(f"{len(errors)} of {len(items)} files failed{' (the others were written)' if results else ''}:\n  " + "\n  ".join(errors))
    return results
