"""The tiler: coverage, exact identity reconstruction, smooth (seamless) blending, window shape, bad settings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gapeval.infer.tiling import Blender, TileGrid, padded_size, raised_cosine, run_tiled, tile_starts, upsample_mask
from lpips_sat.errors import InputError


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (56, 32, 8), (32, 32, 8), (20, 32, 8), (97, 16, 0), (64, 16, 8)])
def test_tile_starts_cover_with_minimum_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + size == length
    overlaps = [a + size - b for a, b in itertools.pairwise(starts)]
    assert all(o >= overlap for o in overlaps)


@pytest.mark.parametrize("shape,tile,overlap,scale", [((3, 50, 37), 16, 4, 1), ((2, 40, 40), 16, 8, 4), ((1, 33, 70), 32, 16, 2), ((4, 16, 16), 16, 4, 4)])
def test_identity_model_reproduces_input_exactly(shape, tile, overlap, scale) -> None:
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32) * 1000
    nearest = lambda t: np.repeat(np.repeat(t, scale, axis=1), scale, axis=2)
    out = run_tiled(x, nearest, tile, overlap, scale)
    assert out.dtype == np.float32
    assert np.array_equal(out, nearest(x))


def test_blending_has_no_seams() -> None:
    """A model adding a different constant per tile: blended output changes smoothly (hard cuts would jump by the offset)."""
    x = np.zeros((1, 64, 64), np.float32)
    offsets = iter(np.random.default_rng(2).uniform(-1, 1, 100))
    out = run_tiled(x, lambda t: t + next(offsets), tile=16, overlap=8, scale=1)[0]
    steps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    # raised cosine over R = 8 px: the weight slope is at most pi / (2 R) per pixel, times the offset range (< 2)
    assert steps < 2 * np.pi / (2 * 8) * 1.05
    hard = run_tiled(x, lambda t: t + next(offsets), tile=16, overlap=0, scale=1)[0]
    assert np.abs(np.diff(hard, axis=1)).max() > 3 * steps  # the same test does see seams without overlap


def test_window_ramps_only_on_shared_edges() -> None:
    grid = TileGrid(40, 40, tile=16, overlap=4, scale=2)
    corner, middle = grid.tiles[0], grid.tiles[len(grid.tiles) // 2]
    wc, wm = grid.window(corner), grid.window(middle)
    assert wc[0, 0] == 1.0 and wc[-1, -1] < 0.01  # image border kept at 1, shared corner ramped down
    assert (wm > 0).all() and wm.max() == 1.0 and wm[0, 0] < 0.01
    ramp = raised_cosine(16, 8, True, False)
    expected = 0.5 - 0.5 * np.cos(np.pi * (np.arange(8) + 0.5) / 8)
    assert np.allclose(ramp[:8], expected) and np.all(ramp[8:] == 1) and np.all(np.diff(ramp[:8]) > 0)


def test_uncovered_pixels_are_nan_and_shapes_checked() -> None:
    grid = TileGrid(32, 32, tile=16, overlap=4, scale=1)
    b = Blender(grid, 1)
    b.add(grid.tiles[0], np.ones((1, 16, 16)))
    out = b.result()
    assert np.isnan(out[0, 20:, 20:]).all() and (out[0, :16, :16] == 1).all()
    with pytest.raises(InputError, match="expected"):
        b.add(grid.tiles[1], np.ones((1, 8, 8)))


@pytest.mark.parametrize("overlap", [-1, 9])
def test_bad_overlap_is_refused(overlap: int) -> None:
    with pytest.raises(InputError, match="overlap"):
        TileGrid(64, 64, tile=16, overlap=overlap)


def test_helpers() -> None:
    m = np.array([[True, False], [False, True]])
    assert upsample_mask(m, 2).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert padded_size(20, 32, 8) == 24 and padded_size(40, 32, 8) == 40 and padded_size(24, 32, 8) == 24
