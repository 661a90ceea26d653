"""Atomic file writes: write a temporary file in the target's folder, then ``os.replace`` it onto the target,
so a reader never sees a half-written file and an interrupted write leaves the old file (or none).

A temporary file is named ``.NAME.PID@HOST.XXXXXXXX.tmp``; one left by a killed process is removed by
:func:`remove_stale_temporaries` at the next run on the same folder (a live writer's file is never touched).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lpips_sat.errors import OutputError

logger = logging.getLogger(__name__)

#: ``.NAME.PID@HOST.RANDOM.tmp`` (see :func:`atomic_path`).
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)\.[^.]+\.tmp$")
#: A temporary file of unknown owner (another host, or an older naming) counts as stale after this many seconds.
STALE_AFTER_S = 6 * 3600.0


def make_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) if needed and return it.

    Raises:
        OutputError: ``folder`` is a file, lies under a file, or cannot be created (the message names ``what``).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder}: is a file, not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(f"{what} {folder}: cannot create the folder; part of the path is a file ({exc.strerror})") from exc
    except OSError as exc:
        raise OutputError(f"{what} {folder}: cannot create the folder ({exc.strerror or exc})") from exc
    return folder


def atomic_path(target: str | Path) -> Path:
    """A fresh temporary path in ``target``'s folder (same file system, so ``os.replace`` is atomic).

    Raises:
        OutputError: ``target`` is a folder, or its folder cannot be created or written (names ``target``).
    """
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; cannot write a file there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}@{_host()}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc}); check the folder exists, is a folder and is writable") from exc
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
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------------ stale temporaries


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_path` whose writer is gone: its pid no longer runs on
    this host, or (another host, or an older naming without pid) it is older than :data:`STALE_AFTER_S`."""
    if not (path.name.startswith(".") and path.name.endswith(".tmp")) or path.is_symlink() or not path.is_file():
        return False
    m = _TEMP_NAME.match(path.name)
    if m and m["host"] == _host():
        return int(m["pid"]) != os.getpid() and not _alive(int(m["pid"]))
    try:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age > STALE_AFTER_S


def remove_stale_temporaries(folder: str | Path, *, locked: bool = False) -> int:
    """Delete the temporary files (``.*.tmp``, recursively) that killed runs left in ``folder``; returns how many.

    Without ``locked`` only those of :func:`is_stale_temporary` go, so other processes writing into the same folder
    (e.g. ``gapeval infer --shard``) keep theirs. ``locked``: the caller holds the folder's exclusive lock
    (``gapeval score``), so no other writer exists and every temporary file is stale.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*.tmp"):
        stale = path.is_file() and not path.is_symlink() if locked else is_stale_temporary(path)
        if stale:
            try:
                path.unlink()
                removed += 1
            except OSError:
                continue
    if removed:
        logger.warning("%s: removed %d temporary file(s) left by an interrupted run", folder, removed)
    return removed
