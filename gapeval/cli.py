"""``gapeval`` command line: one sub-command per module, each exposing ``add_arguments(parser)`` and ``run(args)``.

Exit codes: 0 success, 1 data error (a file or value is wrong; the message names it), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lpips_sat.errors import LPIPSSatError

#: sub-command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("gapeval.score", "score SR prediction folders against high-resolution targets"),
    "degrade": ("gapeval.degrade", "make synthetic low-resolution inputs from high-resolution imagery"),
    "gap": ("gapeval.gap", "domain-gap statistics between scored conditions"),
    "models": ("gapeval.infer.cli_models", "list the inference adapters"),
    "infer": ("gapeval.infer.cli_infer", "run a diffusion SR adapter over a folder of GeoTIFFs"),
    "train": ("gapeval.infer.cli_train", "train an SR model (sr3) on LR/HR folders"),
}


def build_parser() -> argparse.ArgumentParser:
    """The full parser (every sub-command's module is imported to add its arguments)."""
    parser = argparse.ArgumentParser(prog="gapeval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("gapeval"):
                p.set_defaults(_unavailable=f"'{name}' is not available in this installation ({exc})")
                continue
            raise
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gapeval`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "_unavailable", None):
        print(f"gapeval: error: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except LPIPSSatError as exc:
        print(f"gapeval {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gapeval {args.command}: interrupted; finished outputs are kept (re-run with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
