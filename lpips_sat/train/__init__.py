"""Training of LPIPS-Sat: self-supervised backbone pretraining and 2AFC calibration of the heads."""

from __future__ import annotations

import argparse
import logging
from types import ModuleType


def module_main(module: ModuleType, prog: str, argv: list[str] | None = None) -> int:
    """Run a training module (``add_arguments``/``run``) as a script with INFO logging, as ``python -m`` does."""
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").splitlines()[0])
    module.add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return module.run(parser.parse_args(argv))
