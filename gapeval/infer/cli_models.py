"""``gapeval models``: the inference adapters (built-in and installed plug-ins), what they expect and where their weights come from."""

from __future__ import annotations

import argparse
import json
import sys

from gapeval.infer.registry import all_adapters, broken_plugins, get
from lpips_sat.cli import EXIT_USAGE
from lpips_sat.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.add_argument("name", nargs="?", help="show one adapter in full")


def run(args: argparse.Namespace) -> int:
    if args.name:
        try:
            rows = [get(args.name)]
        except InputError as exc:
            print(f"gapeval models: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        rows = list(all_adapters().values())
    broken = {} if args.name else broken_plugins()
    if args.json:
        print(json.dumps([r.as_dict() for r in rows] + [{"name": n, "broken": why} for n, why in broken.items()], indent=2))
        return 0
    if args.name:
        for key, value in rows[0].as_dict().items():
            if value is not None:
                print(f"{key:>14}: {','.join(value) if isinstance(value, tuple) else value}")
        return 0
    print(f"{'model':<15} {'bands':<16} {'x':>2}  {'tile':>4}  family / weights licence")
    for r in rows:
        print(f"{r.name:<15} {','.join(r.bands):<16} {r.scale:>2}  {r.tile:>4}  {r.family}")
        print(f"{'':<42}licence: {r.licence}" + (f"; plug-in: {r.plugin}" if r.plugin else ""))
    for name, why in broken.items():
        print(f"{name:<15} BROKEN plug-in: {why}")
    print("\n`gapeval models NAME` shows normalisation, sampler, checkpoint format and weights of one adapter.")
    return 0
