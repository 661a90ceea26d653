"""In-memory scoring: :func:`compute` (``gapeval.metrics.compute``) scores numpy arrays or torch tensors through the very
code ``gapeval score`` runs on files.

Each image becomes a :class:`~gapeval.scoring.plan.ScenePlan` of in-memory sources (:class:`~gapeval.sources.ArraySource`)
on the placeholder grid that files without georeferencing get (an LR array covers the target's extent), and is scored
by :func:`gapeval.scoring.scene.score_scene`: the same windows, resampling (GDAL bilinear LR upsampling, area average
onto the LR grid), masks, alignment and accumulators, hence the same columns and numbers as a ``pairs.csv`` row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.grids import grid_of, lr_ratio
from gapeval.results import columns
from gapeval.scoring.config import DEFAULT_TILE, ScoreConfig
from gapeval.scoring.plan import SceneInput, ScenePlan, check_protocol
from gapeval.scoring.scene import score_scene
from gapeval.scoring.weights import load_metric
from gapeval.sources import ArraySource
from lpips_sat.errors import InputError
from lpips_sat.metric import MIN_SIZE, LPIPSSat
from lpips_sat.raster import RasterInfo

#: Completes the reflectance checks' advice ("... pass <this> 10000 for Sentinel-2 DN").
_FLAG = "the array divided by"


def _as_batch(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """``x`` as an (N, C, H, W) numpy array, and whether it was one (C, H, W) image."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: expected a numeric array or tensor, got dtype {arr.dtype}")
    if arr.ndim == 3:
        return arr[None], True
    if arr.ndim == 4:
        return arr, False
    raise InputError(f"{name}: expected (C, H, W) or (N, C, H, W), got shape {arr.shape}")


def _input(data: np.ndarray, name: str, target: Any = None) -> SceneInput:
    info = RasterInfo(Path(f"<{name}>"), *data.shape, str(data.dtype))
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    return SceneInput(ArraySource(data, name, grid_of(info, target)), digest, _FLAG)


def compute(
    sr: Any,
    hr: Any,
    lr: Any = None,
    *,
    align: str = "none",
    harmonize: str = "none",
    protocol: str = "gapeval",
    metric: str | Path | LPIPSSat | None = None,
    data_range: float = 1.0,
    tile: int = DEFAULT_TILE,
    batch_size: int = 8,
    sr_factor: float | None = None,
    device: str | None = None,
    **options: Any,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Score super-resolved images against targets in memory: the columns of ``pairs.csv``, per image.

    Args:
        sr, hr: predictions and targets, numpy arrays or torch tensors, (C, H, W) or (N, C, H, W), in reflectance,
            bands in the metric's order (B04, B03, B02, B08 for the shipped LPIPS-Sat); non-finite pixels are invalid.
        lr: optional low-resolution inputs, (C, h, w) or (N, C, h, w), covering the same extent: adds the
            LR-consistency and correctness columns of ``protocol``.
        align, harmonize, protocol: as ``gapeval score --align/--harmonize/--protocol`` (``docs/metrics.md``).
        metric: LPIPS-Sat weights (registry name, ``.safetensors`` path, ``"random-tiny"`` for tests) or an
            :class:`~lpips_sat.metric.LPIPSSat`; default the shipped weights.
        data_range, tile, batch_size, sr_factor, device: as ``gapeval score``. options: further
            :class:`~gapeval.scoring.config.ScoreConfig` fields.
    Returns:
        One dict per image keyed by :func:`gapeval.results.columns` (a single dict for (C, H, W) input). ``key`` is
        the image index, the path columns name the arrays (``<sr>``, ``<hr>``, ``<lr>``), the sha256 columns hash them.
    Raises:
        InputError: shapes, band counts, values that are not reflectance, settings, exactly as ``gapeval score``.

    Example:
        >>> import numpy as np
        >>> hr = np.random.default_rng(0).uniform(0.02, 0.3, (4, 64, 64)).astype(np.float32)
        >>> row = compute(hr + 0.01, hr, metric="random-tiny")
        >>> round(row["mae"], 6), row["status"]
        (0.01, 'ok')
    """
    srs, single = _as_batch(sr, "sr")
    hrs, _ = _as_batch(hr, "hr")
    lrs = _as_batch(lr, "lr")[0] if lr is not None else None
    if srs.shape != hrs.shape:
        raise InputError(f"sr {srs.shape} and hr {hrs.shape} must have one shape")
    if lrs is not None and lrs.shape[:2] != srs.shape[:2]:
        raise InputError(f"lr {lrs.shape} must hold the images and bands of sr {srs.shape}")
    if min(srs.shape[-2:]) < MIN_SIZE:
        raise InputError(f"hr: {srs.shape[-1]}x{srs.shape[-2]} px is smaller than LPIPS-Sat's minimum of {MIN_SIZE}x{MIN_SIZE}")
    net, label, sha = load_metric(metric, device)
    if srs.shape[1] != len(net.model_bands):
        raise InputError(f"sr and hr have {srs.shape[1]} bands; the metric takes {len(net.model_bands)} ({', '.join(net.model_bands)}), in that order")
    config = ScoreConfig(
        weights=label,
        weights_sha256=sha,
        bands=tuple(net.model_bands),
        with_lr=lrs is not None,
        data_range=data_range,
        tile=tile,
        sr_factor=sr_factor,
        protocol=protocol,
        align=align,
        harmonize=harmonize,
        **options,
    )
    cols = columns(config)
    rows = []
    for i in range(srs.shape[0]):
        target = _input(hrs[i], "hr")
        plan = ScenePlan(str(i), target, {"sr": _input(srs[i], "sr", target.source.grid)})
        if lrs is not None:
            plan.lr = _input(lrs[i], "lr", target.source.grid)
            plan.ratio = lr_ratio(plan.lr.source.grid, target.source.grid, plan.lr.source.path, target.source.path)
            check_protocol(plan, config)
        record = score_scene(plan, config, net, batch_size=batch_size)[0]
        rows.append({c: record.get(c) for c in cols})
    return rows[0] if single else rows
