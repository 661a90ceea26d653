"""Listing image folders and pairing their files (prediction, target, optional LR) by relative path and stem."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.raster import SUFFIXES, gdal_path, is_virtual

logger = logging.getLogger(__name__)


def walk_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, recursively, following symbolic links to folders; hidden entries
    (names starting with ``.``) are skipped. A link back to a folder on its own path (a loop) is not entered (logged).

    Raises:
        InputError: a broken symbolic link with an image suffix (never silently dropped), or an unreadable folder.
    """

    def visit(d: Path, ancestors: frozenset[tuple[int, int]]) -> Iterator[Path]:
        try:
            st = d.stat()
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"{d}: cannot list the folder ({exc.strerror})") from exc
        here = ancestors | {(st.st_dev, st.st_ino)}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                real = path.stat()
                if (real.st_dev, real.st_ino) in here:
                    logger.warning("%s: symbolic link back to a parent folder (a loop); not followed", path)
                    continue
                yield from visit(path, here)
            elif entry.is_file(follow_symlinks=True):
                yield path
            elif entry.is_symlink() and path.suffix.lower() in SUFFIXES:
                raise InputError(f"{path}: broken symbolic link (its target {os.readlink(path)!r} does not exist)")

    yield from visit(folder, frozenset())


#: A "folder" given as a text file lists its images, one path or URL per line (remote COGs, docs/scale.md).
LIST_SUFFIX = ".txt"


def list_file(path: Path) -> dict[str, Path]:
    """Images named in a list file, keyed by their path relative to the deepest folder they share, without suffix.

    One entry per line; blank lines and ``#`` comments are skipped. ``https://``/``s3://``/``gs://`` URLs become GDAL
    virtual paths (:func:`lpips_sat.raster.gdal_path`), ``/vsi...`` paths are kept, other paths are relative to the
    list's folder. Remote entries are read by GDAL (windowed, HTTP range requests for COGs).
    Raises:
        InputError: an empty list, an unsupported suffix, or two entries with the same key.
    """
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entry = Path(gdal_path(text))
        if not is_virtual(entry) and not entry.is_absolute():
            entry = path.parent / entry
        if entry.suffix.lower() not in SUFFIXES:
            raise InputError(f"{path}:{n}: {text!r} is not an image ({', '.join(SUFFIXES)})")
        entries.append(entry)
    if not entries:
        raise InputError(f"{path}: lists no files")
    common = os.path.commonpath([str(e.parent) for e in entries])
    out: dict[str, Path] = {}
    for entry in entries:
        key = str(entry.with_suffix(""))[len(common):].lstrip("/")
        if key in out:
            raise InputError(f"{path}: {out[key]} and {entry} have the same key {key!r}")
        out[key] = entry
    return dict(sorted(out.items()))


def list_images(folder: str | Path, pattern: str | None = None) -> dict[str, Path]:
    """Images under ``folder`` (recursive) keyed by relative path without suffix (``sub/scene_01``).

    Only supported suffixes count; hidden files (temporary files of atomic writes) are ignored; symbolic links to
    files and folders are followed (loops are not); ``pattern`` is a glob matched against the relative path
    (e.g. ``*.tif`` or ``2023/*``).
    Raises:
        MissingFileError: no such folder. InputError: not a folder, or two files share a key (``a.tif`` + ``a.png``).
    """
    from fnmatch import fnmatch

    folder = Path(folder)
    if folder.suffix.lower() == LIST_SUFFIX and folder.is_file():
        return {k: p for k, p in list_file(folder).items() if not pattern or fnmatch(k + p.suffix, pattern) or fnmatch(p.name, pattern)}
    if is_virtual(folder):
        raise InputError(f"{folder}: folders on GDAL's virtual file systems are not listed; pass a {LIST_SUFFIX} file naming one "
                         "file or URL per line instead")
    if not folder.exists():
        raise MissingFileError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder of images, got a file")
    out: dict[str, Path] = {}
    for path in walk_files(folder):
        rel = path.relative_to(folder)
        if path.suffix.lower() not in SUFFIXES:
            continue
        if pattern and not (fnmatch(rel.as_posix(), pattern) or fnmatch(path.name, pattern)):
            continue
        key = rel.with_suffix("").as_posix()
        if key in out:
            raise InputError(f"{folder}: {out[key].name} and {path.name} have the same name stem {key!r}; keep one or use --glob")
        out[key] = path
    return out


@dataclass
class Pairing:
    """Files matched by key across folders. ``preds[set][key]`` and ``lr[key]`` only hold keys that have a target."""

    targets: dict[str, Path]
    preds: dict[str, dict[str, Path]]
    lr: dict[str, Path] | None
    unpaired: dict[str, list[str]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Target keys that at least one prediction set covers, sorted."""
        return sorted(k for k in self.targets if any(k in files for files in self.preds.values()))

    @property
    def n_pairs(self) -> int:
        return sum(len(files) for files in self.preds.values())


def pair_folders(
    targets: str | Path,
    preds: Mapping[str, str | Path],
    lr: str | Path | None = None,
    *,
    pattern: str | None = None,
    allow_missing: bool = False,
) -> Pairing:
    """Match prediction folders (and an optional LR folder) to a target folder by relative path and stem.

    Raises:
        InputError: a folder holds no images, or files lack a partner and ``allow_missing`` is False
            (the message lists them); ``MissingFileError`` for missing folders.
    """
    hint = f" matching {pattern!r}" if pattern else ""
    tfiles = list_images(targets, pattern)
    if not tfiles:
        raise InputError(f"{targets}: no images ({', '.join(SUFFIXES)}){hint} in the target folder")
    pairing = Pairing(targets=tfiles, preds={}, lr=None)
    for name, folder in preds.items():
        pfiles = list_images(folder, pattern)
        if not pfiles:
            raise InputError(f"{folder}: no images ({', '.join(SUFFIXES)}){hint} in prediction folder {name!r}")
        pairing.preds[name] = {k: p for k, p in pfiles.items() if k in tfiles}
        missing = sorted(set(tfiles) - set(pfiles))
        extra = sorted(set(pfiles) - set(tfiles))
        if missing:
            pairing.unpaired[f"targets without prediction in {name}"] = missing
        if extra:
            pairing.unpaired[f"predictions in {name} without target"] = extra
        if not pairing.preds[name]:
            raise InputError(
                f"{folder}: none of its {len(pfiles)} files matches a target in {targets} (e.g. {extra[:3]} vs {sorted(tfiles)[:3]})"
            )
    if lr is not None:
        lfiles = list_images(lr, pattern)
        if not lfiles:
            raise InputError(f"{lr}: no images ({', '.join(SUFFIXES)}){hint} in the low-resolution folder")
        pairing.lr = {k: p for k, p in lfiles.items() if k in tfiles}
        missing = sorted(set(tfiles) - set(lfiles))
        if missing:
            pairing.unpaired["targets without LR input"] = missing
    if pairing.unpaired and not allow_missing:
        lines = [
            f"  {label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}" for label, keys in pairing.unpaired.items()
        ]
        raise InputError("Unpaired files (pass --allow-missing to score only the complete pairs):\n" + "\n".join(lines))
    return pairing
