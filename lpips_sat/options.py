"""Option types for the command lines (``type=`` of argparse), shared by every ``lpips-sat`` and ``gapeval``
sub-command: bad values are usage errors at parse time (exit 2), with the option named by argparse, instead of data
errors discovered later (or numbers silently computed from them). Non-finite numbers (nan, inf) are always refused."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from lpips_sat.errors import InputError


def number(kind: type = float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           multiple_of: int | None = None) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) within ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the
    bound), optionally a multiple of ``multiple_of``. The returned function carries its bounds as attributes
    (``expects``, ``kind``, ``lo``, ``hi``, ``lo_open``, ``hi_open``, ``multiple_of``) for docs and tests."""
    words = []
    if lo is not None:
        words.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        words.append(f"{'<' if hi_open else '<='} {hi:g}")
    if multiple_of:
        words.append(f"a multiple of {multiple_of}")
    want = f"{'an integer' if kind is int else 'a finite number'}{' ' + ' and '.join(words) if words else ''}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        bad = not math.isfinite(value)
        bad = bad or (lo is not None and (value <= lo if lo_open else value < lo))
        bad = bad or (hi is not None and (value >= hi if hi_open else value > hi))
        bad = bad or bool(multiple_of and value % multiple_of)
        if bad:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    for key, value in dict(expects=want, kind=kind, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, multiple_of=multiple_of).items():
        setattr(parse, key, value)
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""
    return number(int, low)


#: Common option types.
positive_int = number(int, 1)
nonnegative_int = number(int, 0)
#: A finite number > 0 (scales, data ranges, learning rates).
positive_float = number(float, 0, lo_open=True)
nonnegative_float = number(float, 0)
finite_float = number(float)
#: A finite number > 1 (resolution ratios).
ratio_above_one = number(float, 1, lo_open=True)
#: A fraction in [0, 1], and one strictly inside (0, 1) (hold-out shares, error rates).
fraction = number(float, 0, 1)
open_fraction = number(float, 0, 1, lo_open=True, hi_open=True)


def check_device(name: str) -> str:
    """``name`` if this machine has that torch device (``auto`` always passes; see :func:`resolve_device`).

    Raises:
        InputError: not a torch device name (``tpu``), or a backend (CUDA, MPS, XPU ...) or CUDA index this machine
            does not have.
    """
    import torch

    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {name!r}: CUDA is not available on this machine (torch {torch.__version__}); use cpu (or auto)")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
        return name
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise InputError(f"device {name!r}: the {dev.type} backend is not available on this machine; use cpu (or auto)")
    return name


def resolve_device(name: str | None) -> str:
    """``auto`` (or ``None``) -> ``cuda`` when available, else ``cpu``; any other name checked by :func:`check_device`."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(name)


def device(text: str) -> str:
    """argparse type of ``--device`` (see :func:`check_device`)."""
    try:
        return check_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
