"""``gapeval`` command line: one sub-command per module, each exposing ``add_arguments(parser)`` and ``run(args)``.

Exit codes (lpips_sat.cli.EXIT_*, docs/reliability.md): 0 success, 1 data error (a file or value is wrong, or an
output cannot be written; the message names it) or a missing optional package (the message names the extra to
install), 2 usage error, 3 partial (some pairs or files failed, the others were written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from lpips_sat.cli import EXIT_DATA, add_module_commands, dispatch

#: sub-command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("gapeval.score", "score SR prediction folders against high-resolution targets"),
    "degrade": ("gapeval.degrade", "make synthetic low-resolution inputs from high-resolution imagery"),
    "pairs": ("gapeval.pairs", "build an aligned cross-sensor HR/LR pair dataset (and synthetic twins) from scenes"),
    "gap": ("gapeval.gap", "domain-gap statistics between scored conditions"),
    "merge": ("gapeval.shards", "combine the results folders of gapeval score --shard K/N into one"),
    "models": ("gapeval.infer.cli_models", "list the inference adapters"),
    "infer": ("gapeval.infer.cli_infer", "run a diffusion SR adapter over a folder of GeoTIFFs"),
    "train": ("gapeval.infer.cli_train", "train an SR model (sr3, resshift) on LR/HR folders"),
    "study": ("gapeval.study.cli", "the 2 x 2 domain-gap study: train, infer, score, gap, report (cached, resumable)"),
}


#: Import names of the ``[eval]`` extra's packages; every gapeval command needs them.
EVAL_MODULES = ("rasterio", "scipy", "matplotlib", "tqdm", "yaml", "PIL", "huggingface_hub")


def missing_eval_modules() -> list[str]:
    """The ``[eval]`` packages that are not installed (found without importing them)."""
    return [m for m in EVAL_MODULES if importlib.util.find_spec(m) is None]


def build_parser() -> argparse.ArgumentParser:
    """The full parser (every sub-command's module is imported to add its arguments)."""
    parser = argparse.ArgumentParser(prog="gapeval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_module_commands(parser.add_subparsers(dest="command", required=True), COMMANDS, ("gapeval",))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gapeval`` script."""
    missing = missing_eval_modules()
    if missing:
        print(
            f"gapeval: error: gapeval needs the optional packages of the [eval] extra (missing: {', '.join(missing)}); "
            'install them with: pip install "lpips-sat[eval]"',
            file=sys.stderr,
        )
        return EXIT_DATA
    return dispatch(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
