"""``gapeval models``: the inference adapters, what they expect and where their weights come from."""

from __future__ import annotations

import argparse
import json

from gapeval.infer.registry import ADAPTERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.add_argument("name", nargs="?", help="show one adapter in full")


def run(args: argparse.Namespace) -> int:
    from gapeval.infer.registry import get

    rows = [get(args.name)] if args.name else list(ADAPTERS.values())
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    if args.name:
        for key, value in rows[0].as_dict().items():
            if value is not None:
                print(f"{key:>14}: {','.join(value) if isinstance(value, tuple) else value}")
        return 0
    print(f"{'model':<15} {'bands':<16} {'x':>2}  {'tile':>4}  family / weights licence")
    for r in rows:
        print(f"{r.name:<15} {','.join(r.bands):<16} {r.scale:>2}  {r.tile:>4}  {r.family}")
        print(f"{'':<42}licence: {r.licence}")
    print("\n`gapeval models NAME` shows normalisation, sampler, checkpoint format and weights of one adapter.")
    return 0
