"""LPIPS-Sat over tiles of large rasters, batched, with masks, for one target and several predictions.

Per tile: invalid pixels of both images are filled with the target's mean over its valid pixels (per band)
before the network; a tile with no valid pixel is skipped; the image distance is the mean of the tile
distances weighted by each tile's valid pixels in its core (the part of the image the tile is responsible
for). The target's features are computed once per tile and reused for every prediction whose invalid
pixels lie where the target is invalid too (the usual case); otherwise that pair is filled and run alone.
A registering metric (``LPIPSSat.registers``: v5 weights) registers each prediction with the target before the network
(both move), so its features come pair by pair from :meth:`LPIPSSat.pair_features` and no target features are shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lpips_sat.metric import LPIPSSat


def fill_values(target: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """Per-band mean of ``target`` (bands, rows, cols) over ``valid`` pixels, or ``None`` if none is valid."""
    if not valid.any():
        return None
    return target[:, valid].mean(axis=1).astype(np.float32)


def filled(x: np.ndarray, valid: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``x`` with pixels outside ``valid`` set to ``fill`` (per band)."""
    return np.where(valid[None], x, fill[:, None, None]).astype(np.float32)


@dataclass
class _Tile:
    target: np.ndarray  # filled where the target is invalid
    target_valid: np.ndarray
    fill: np.ndarray
    preds: dict[str, np.ndarray]  # raw, NaN where invalid
    valid: dict[str, np.ndarray]  # joint validity per prediction
    core: tuple[slice, slice]
    tag: Any


@dataclass
class TiledLPIPS:
    """Accumulates LPIPS-Sat of several predictions against one target, tile by tile, in batches.

    Args:
        metric: an :class:`~lpips_sat.metric.LPIPSSat` taking reflectance in its model band order.
        names: prediction names. batch_size: tiles per network call. maps: also return distance maps.
    """

    metric: LPIPSSat
    names: list[str]
    batch_size: int = 8
    maps: bool = False
    _pending: list[_Tile] = field(default_factory=list)
    _sum: dict[str, float] = field(default_factory=dict)
    _weight: dict[str, float] = field(default_factory=dict)
    _tiles: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in self.names:
            self._sum[n], self._weight[n], self._tiles[n] = 0.0, 0.0, 0

    @property
    def device(self) -> torch.device:
        return next(self.metric.parameters()).device

    def add(
        self,
        target: np.ndarray,
        target_valid: np.ndarray,
        preds: Mapping[str, np.ndarray],
        valid: Mapping[str, np.ndarray],
        core: tuple[slice, slice],
        tag: Any = None,
    ) -> list[tuple[str, Any, np.ndarray]]:
        """Queue one tile (arrays of the tile; ``core`` slices of its core; ``valid``: joint masks per prediction).

        Returns the maps finished by a flush this call triggered (see :meth:`flush`).
        """
        fill = fill_values(target, target_valid)
        if fill is None:
            return []
        self._pending.append(_Tile(filled(target, target_valid, fill), target_valid, fill, dict(preds), dict(valid), core, tag))
        return self.flush() if len(self._pending) >= self.batch_size else []

    @torch.inference_mode()
    def flush(self) -> list[tuple[str, Any, np.ndarray]]:
        """Run the network on the queued tiles. Returns ``(name, tag, core map)`` triples when ``maps`` (map NaN at
        invalid pixels), else an empty list."""
        tiles, self._pending = self._pending, []
        out: list[tuple[str, Any, np.ndarray]] = []
        by_shape: dict[tuple[int, ...], list[_Tile]] = {}
        for t in tiles:
            by_shape.setdefault(t.target.shape, []).append(t)
        for group in by_shape.values():
            size = group[0].target.shape[1:]
            # a registering metric (v5) moves the target too, pair by pair, so target features cannot be shared
            shared_feats = not self.metric.registers
            tfeat = self.metric.features(self._tensor([t.target for t in group]), "target") if shared_feats else None
            for name in self.names:
                todo = [i for i, t in enumerate(group) if name in t.preds and t.valid[name].any()]
                if not todo:
                    continue
                shared = [i for i in todo if np.array_equal(group[i].valid[name], group[i].target_valid)]
                alone = [i for i in todo if i not in shared]
                runs = [(shared, True)] + [([i], False) for i in alone]
                for idx, use_cache in runs:
                    if not idx:
                        continue
                    sel = [group[i] for i in idx]
                    pred = self._tensor([filled(t.preds[name], t.valid[name], t.fill) for t in sel])
                    if not shared_feats:
                        target = self._tensor([t.target if use_cache else filled(t.target, t.valid[name], t.fill) for t in sel])
                        pf, tf, _ = self.metric.pair_features(pred, target)
                    else:
                        pf = self.metric.features(pred, name)
                        if use_cache:  # the batch's own target features; index (a copy) only for a subset of tiles
                            tf = tfeat if idx == list(range(len(group))) else [f[idx] for f in tfeat]
                        else:
                            tf = self.metric.features(self._tensor([filled(t.target, t.valid[name], t.fill) for t in sel]), "target")
                    dist = self.metric.distance(pf, tf)[0].double().cpu().numpy()
                    dmap = self.metric.distance(pf, tf, spatial=True, size=size)[0][:, 0].float().cpu().numpy() if self.maps else None
                    for j, t in enumerate(sel):
                        weight = float(t.valid[name][t.core].sum())
                        self._sum[name] += dist[j] * weight
                        self._weight[name] += weight
                        self._tiles[name] += 1
                        if dmap is not None:
                            m = np.where(t.valid[name], dmap[j], np.nan)[t.core]
                            out.append((name, t.tag, m.astype(np.float32)))
        return out

    def _tensor(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).to(self.device)

    def result(self, name: str) -> tuple[float, int]:
        """``(distance, tiles used)``: the valid-pixel-weighted mean over tiles (NaN when no tile was valid)."""
        w = self._weight[name]
        return (self._sum[name] / w if w else float("nan")), self._tiles[name]
