"""The one tiler of ``gapeval infer``: overlapping low-resolution tiles, blended at x``scale`` with raised-cosine ramps.

Tiles of ``tile`` x ``tile`` low-resolution pixels step by ``tile - overlap``; the last tile of a row/column is
shifted back to end on the image edge, so every tile has full size and every interior seam has at least
``overlap`` pixels of overlap. Each tile's output is weighted by a separable window that is 1 inside and rises
as a raised cosine, ``w(i) = 0.5 - 0.5 cos(pi (i + 0.5) / R)`` for ``i < R = overlap * scale``, along every edge
that borders another tile (not along the image border). The blended image is ``sum(w * out) / sum(w)``,
accumulated in float64: an identity model therefore reproduces its input exactly, and the weights are
continuous, so no seam appears.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lpips_sat.errors import InputError


@dataclass(frozen=True)
class Tile:
    """A window of the low-resolution image: rows ``y:y+h``, columns ``x:x+w``."""

    y: int
    x: int
    h: int
    w: int

    @property
    def key(self) -> str:
        """Stable name of the tile (its origin), used for seeds and cache files."""
        return f"y{self.y}_x{self.x}"


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length`` with at least ``overlap`` overlap."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def raised_cosine(n: int, ramp: int, lead: bool, trail: bool) -> np.ndarray:
    """1-D window of length ``n``: 1 in the middle, raised-cosine ramps of ``ramp`` samples at the flagged ends."""
    w = np.ones(n, dtype=np.float64)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        if lead:
            w[:ramp] = np.minimum(w[:ramp], r)
        if trail:
            w[n - ramp:] = np.minimum(w[n - ramp:], r[::-1])
    return w


class TileGrid:
    """Overlapping tiles over a ``height`` x ``width`` low-resolution image, and their blending windows at x``scale``.

    Args:
        height, width: image size in low-resolution pixels.
        tile: tile side in low-resolution pixels (clipped to the image size).
        overlap: overlap in low-resolution pixels, ``0 <= overlap <= tile // 2``.
        scale: output/input pixel ratio.
    Raises:
        InputError: impossible tile/overlap settings.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int, scale: int = 1) -> None:
        if tile <= 0 or scale <= 0:
            raise InputError(f"tile ({tile}) and scale ({scale}) must be positive")
        if overlap < 0 or 2 * overlap > tile:
            raise InputError(f"overlap must lie in 0..tile/2 = 0..{tile // 2} low-resolution pixels, got {overlap}")
        self.height, self.width, self.overlap, self.scale = height, width, overlap, scale
        self.tile_h, self.tile_w = min(tile, height), min(tile, width)
        ys = tile_starts(height, self.tile_h, overlap)
        xs = tile_starts(width, self.tile_w, overlap)
        self.tiles = [Tile(y, x, self.tile_h, self.tile_w) for y in ys for x in xs]

    def __len__(self) -> int:
        return len(self.tiles)

    def window(self, tile: Tile) -> np.ndarray:
        """Blending weights (scale*h, scale*w) of ``tile``: ramps only along edges shared with another tile."""
        s, ramp = self.scale, self.overlap * self.scale
        wy = raised_cosine(tile.h * s, ramp, tile.y > 0, tile.y + tile.h < self.height)
        wx = raised_cosine(tile.w * s, ramp, tile.x > 0, tile.x + tile.w < self.width)
        return np.outer(wy, wx)


class Blender:
    """Accumulates tile outputs (C, scale*h, scale*w) into the blended (C, scale*H, scale*W) image."""

    def __init__(self, grid: TileGrid, channels: int) -> None:
        self.grid = grid
        s = grid.scale
        self.num = np.zeros((channels, grid.height * s, grid.width * s), dtype=np.float64)
        self.den = np.zeros((grid.height * s, grid.width * s), dtype=np.float64)

    def add(self, tile: Tile, out: np.ndarray) -> None:
        """Add one tile's output."""
        s = self.grid.scale
        expected = (self.num.shape[0], tile.h * s, tile.w * s)
        if tuple(out.shape) != expected:
            raise InputError(f"tile {tile.key}: model output has shape {tuple(out.shape)}, expected {expected}")
        w = self.grid.window(tile)
        rows, cols = slice(tile.y * s, (tile.y + tile.h) * s), slice(tile.x * s, (tile.x + tile.w) * s)
        self.num[:, rows, cols] += w * out
        self.den[rows, cols] += w

    def result(self) -> np.ndarray:
        """The blended image as float32; pixels no tile covered are NaN."""
        out = np.full(self.num.shape, np.nan, dtype=np.float32)
        covered = self.den > 0
        out[:, covered] = (self.num[:, covered] / self.den[covered]).astype(np.float32)
        return out


def run_tiled(image: np.ndarray, model: Callable[[np.ndarray], np.ndarray], tile: int, overlap: int, scale: int = 1) -> np.ndarray:
    """Apply ``model`` ((C, h, w) -> (C', scale*h, scale*w)) tile by tile over ``image`` (C, H, W) and blend.

    >>> x = np.random.default_rng(0).random((2, 50, 37)).astype(np.float32)
    >>> bool(np.array_equal(run_tiled(x, lambda t: t, tile=16, overlap=4), x))
    True
    """
    grid = TileGrid(image.shape[1], image.shape[2], tile, overlap, scale)
    blender: Blender | None = None
    for t in grid.tiles:
        out = np.asarray(model(image[:, t.y:t.y + t.h, t.x:t.x + t.w]))
        if blender is None:
            blender = Blender(grid, out.shape[0])
        blender.add(t, out)
    assert blender is not None
    return blender.result()


def upsample_mask(valid: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour x``scale`` of a (H, W) boolean mask (each low-resolution pixel -> scale x scale block)."""
    return np.repeat(np.repeat(valid, scale, axis=0), scale, axis=1)


def padded_size(length: int, tile: int, multiple: int) -> int:
    """Smallest size >= ``length`` that a tile side (a multiple of ``multiple``, at most ``tile``) can cover exactly."""
    return max(length, min(tile, math.ceil(length / multiple) * multiple))
