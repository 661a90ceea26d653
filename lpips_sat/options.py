"""Option types for the command lines (``type=`` of argparse): bad values are usage errors at parse time (exit 2),
with the option named by argparse, instead of data errors discovered later."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from lpips_sat.errors import InputError


def _number(kind: type, low: float, inclusive: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""
    return _number(int, low, True, f"an integer >= {low}")  # type: ignore[return-value]


#: A finite number > 0 (scales, data ranges).
positive_float = _number(float, 0.0, False, "a finite number > 0")
#: A finite number > 1 (resolution ratios).
ratio_above_one = _number(float, 1.0, False, "a finite number > 1")


def check_device(name: str) -> str:
    """``name`` if this machine has that torch device (``auto`` always passes).

    Raises:
        InputError: an unknown device type, or CUDA/MPS (or a CUDA index) this machine does not have.
    """
    import torch

    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: CUDA is not available on this machine; use cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {name!r}: MPS is not available on this machine; use cpu (or auto)")
    elif dev.type != "cpu":
        raise InputError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return name


def device(text: str) -> str:
    """argparse type of ``--device`` (see :func:`check_device`)."""
    try:
        return check_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
