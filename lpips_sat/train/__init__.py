"""Training of LPIPS-Sat: self-supervised backbone pretraining and 2AFC calibration of the heads."""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from lpips_sat.errors import LPIPSSatError


def module_main(module: ModuleType, prog: str, argv: list[str] | None = None) -> int:
    """Run a training module (``add_arguments``/``run``) as a script with INFO logging, as ``python -m`` does."""
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").splitlines()[0])
    module.add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parser.parse_args(argv)
    try:
        return module.run(args)
    except LPIPSSatError as exc:  # a data/weights problem: one clear line, exit code 1 (as the lpips-sat CLI)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
