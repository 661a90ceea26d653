"""``gapeval`` command line: one sub-command per module, each exposing ``add_arguments(parser)`` and ``run(args)``.

Exit codes: 0 success, 1 data error (a file or value is wrong; the message names it), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys

from lpips_sat.cli import add_module_commands, dispatch

#: sub-command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("gapeval.score", "score SR prediction folders against high-resolution targets"),
    "degrade": ("gapeval.degrade", "make synthetic low-resolution inputs from high-resolution imagery"),
    "gap": ("gapeval.gap", "domain-gap statistics between scored conditions"),
    "models": ("gapeval.infer.cli_models", "list the inference adapters"),
    "infer": ("gapeval.infer.cli_infer", "run a diffusion SR adapter over a folder of GeoTIFFs"),
    "train": ("gapeval.infer.cli_train", "train an SR model (sr3, resshift) on LR/HR folders"),
    "study": ("gapeval.study.cli", "the 2 x 2 domain-gap study: train, infer, score, gap, report (cached, resumable)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The full parser (every sub-command's module is imported to add its arguments)."""
    parser = argparse.ArgumentParser(prog="gapeval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_module_commands(parser.add_subparsers(dest="command", required=True), COMMANDS, ("gapeval",))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gapeval`` script."""
    return dispatch(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
