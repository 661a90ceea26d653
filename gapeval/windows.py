"""Window arithmetic for reading large rasters tile by tile (rasterio ``Window`` objects)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lpips_sat.errors import InputError


def iter_windows(height: int, width: int, tile: int) -> Iterator[Any]:
    """Non-overlapping ``tile`` x ``tile`` windows covering the image row by row (edge windows are smaller)."""
    from rasterio.windows import Window

    if tile <= 0:
        raise InputError(f"tile size must be positive, got {tile}")
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            yield Window(col, row, min(tile, width - col), min(tile, height - row))


def expand_window(window: Any, margin: int, height: int, width: int) -> Any:
    """``window`` grown by ``margin`` pixels on every side, clipped to the image."""
    from rasterio.windows import Window

    c0, r0 = max(0, int(window.col_off) - margin), max(0, int(window.row_off) - margin)
    c1 = min(width, int(window.col_off + window.width) + margin)
    r1 = min(height, int(window.row_off + window.height) + margin)
    return Window(c0, r0, c1 - c0, r1 - r0)


def fixed_size_window(window: Any, size: int, height: int, width: int) -> Any:
    """A ``size`` x ``size`` window (or the whole image side if smaller) holding ``window``, moved inward at edges."""
    from rasterio.windows import Window

    h, w = min(size, height), min(size, width)
    r0 = min(int(window.row_off), height - h)
    c0 = min(int(window.col_off), width - w)
    return Window(c0, r0, w, h)


def window_slices(inner: Any, outer: Any) -> tuple[slice, slice]:
    """Row/column slices that cut ``inner`` out of an array read for ``outer`` (``inner`` lies in ``outer``)."""
    r0, c0 = int(inner.row_off - outer.row_off), int(inner.col_off - outer.col_off)
    return slice(r0, r0 + int(inner.height)), slice(c0, c0 + int(inner.width))



def full_window(height: int, width: int) -> Any:
    """The window covering a whole ``height`` x ``width`` image."""
    from rasterio.windows import Window

    return Window(0, 0, width, height)


def union_window(a: Any, b: Any) -> Any:
    """The smallest window holding both ``a`` and ``b``."""
    from rasterio.windows import Window

    r0, c0 = min(a.row_off, b.row_off), min(a.col_off, b.col_off)
    r1, c1 = max(a.row_off + a.height, b.row_off + b.height), max(a.col_off + a.width, b.col_off + b.width)
    return Window(int(c0), int(r0), int(c1 - c0), int(r1 - r0))
