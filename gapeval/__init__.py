"""gapeval: score super-resolved Sentinel-2 against real high-resolution targets and measure domain gaps.

``gapeval.score(pred_dir, target_dir, ...)`` scores folders in Python (see :func:`gapeval.score.score`); the
sub-module is imported on first use so ``import gapeval`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "score":
        return importlib.import_module("gapeval.score")  # a callable module: gapeval.score(...) runs score()
    raise AttributeError(f"module 'gapeval' has no attribute {name!r}")
