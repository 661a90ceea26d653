"""Atomic file writes: write a temporary file in the target's folder, then ``os.replace`` it onto the target,
so a reader never sees a half-written file and an interrupted write leaves the old file (or none)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lpips_sat.errors import InputError


def atomic_path(target: str | Path) -> Path:
    """A fresh temporary path in ``target``'s folder (same file system, so ``os.replace`` is atomic).

    Raises:
        InputError: ``target`` is a folder, or its folder cannot be created or written (names ``target``).
    """
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; cannot write a file there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InputError(f"{target}: cannot write ({exc.strerror or exc}); check the folder exists, is a folder and is writable") from exc
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs should get the usual permissions
    return Path(tmp)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target``, on error it is removed."""
    tmp = atomic_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
