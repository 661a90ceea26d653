"""The pair-set layout the study reads, and the study's working view of it.

Layout (written by ``gapeval pairs`` and by :mod:`gapeval.study.proxy`)::

    ROOT/{train,val,test}/hr/TILE.tif            high-resolution targets
    ROOT/{train,val,test}/<LR folder>/TILE.tif   low-resolution inputs on the 1/scale grid (e.g. lr = real,
                                                 lr_synth_s2 / lr_synth_bicubic = the HR degraded)
    ROOT/manifest.csv                            provenance per tile (optional here)

The view (``OUT/data/SPLIT/FOLDER/TILE.tif``) holds symbolic links to the tiles the study uses: the tiles present in
``hr`` and in every LR folder the config names, capped per split by ``data.max_tiles`` (first tiles by name).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lpips_sat.raster import RASTER_SUFFIXES
from lpips_sat.errors import InputError, MissingFileError

SPLITS = ("train", "val", "test")


def tiles(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the GeoTIFFs directly in ``folder``."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES} if folder.is_dir() else {}


def make_view(root: Path, view: Path, folders: list[str], max_tiles: dict[str, int]) -> dict[str, int]:
    """Link the usable tiles of ``root`` into ``view``; returns tiles per split.

    Raises:
        MissingFileError: no pair set at ``root``. InputError: a missing folder, or a split without any complete tile
            (the message names the split and the folders).
    """
    if not root.is_dir():
        raise MissingFileError(f"{root}: pair set does not exist; build it with `gapeval pairs` or data.naip_proxy")
    if view.exists():
        shutil.rmtree(view)
    counts = {}
    for split in SPLITS:
        found = {f: tiles(root / split / f) for f in ["hr", *folders]}
        missing = [f for f, t in found.items() if not (root / split / f).is_dir()]
        if missing:
            raise InputError(f"{root / split}: missing folder(s) {missing}; the config names LR folders {folders}")
        keys = sorted(set.intersection(*(set(t) for t in found.values())))
        if not keys:
            raise InputError(f"{root / split}: empty split (no tile is present in all of {['hr', *folders]}); "
                             "check the split fractions / filters that built the pair set")
        cap = max_tiles.get(split, 0)
        keys = keys[:cap] if cap else keys
        for f, t in found.items():
            (view / split / f).mkdir(parents=True, exist_ok=True)
            for k in keys:
                os.symlink(t[k].resolve(), view / split / f / t[k].name)
        counts[split] = len(keys)
    return counts
