#!/usr/bin/env python3
"""How much does the untrained-backbone baseline move with its random initialisation?

The model card compares LPIPS-Sat with one untrained backbone (initialisation seed 0, the same input normalisation,
registration, heads recipe and judgments). ``calibrate --untrained-seed K`` draws another; this script reads the
``report.json`` of such runs (same judgments: their LPIPS-Sat columns must agree) and prints one line for the card's
"What we learned" (``ship_weights.py --learned``):

    python scripts/exp_untrained_seeds.py runs/v5/calibrate/report.json runs/v5/untrained_seed1/report.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

UNTRAINED = "untrained backbone, calibrated heads"
#: Splits where a metric's realistic side is the plain side plus two damages (every pixel metric right by construction).
SKIP_SUFFIX = "/sr_realistic"


def load(paths: list[Path]) -> list[dict]:
    """The reports, checked to share their judgments (the same LPIPS-Sat 2AFC on every split) and to differ in seed."""
    reports = [json.loads(p.read_text()) for p in paths]
    ref = reports[0]["splits"]
    for p, r in zip(paths[1:], reports[1:]):
        if set(r["splits"]) != set(ref) or any(abs(r["splits"][n]["2afc"]["LPIPS-Sat"] - ref[n]["2afc"]["LPIPS-Sat"]) > 1e-9 for n in ref):
            raise SystemExit(f"error: {p}: other judgments or heads than {paths[0]} (its LPIPS-Sat column differs)")
    seeds = [r.get("untrained_seed", 0) for r in reports]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: the reports repeat an untrained seed: {seeds}")
    return reports


def summary(reports: list[dict], name: str) -> str:
    """One line: per split where LPIPS-Sat is not above every seed, the untrained scores by seed; and the counts."""
    seeds = [r.get("untrained_seed", 0) for r in reports]
    splits = [n for n in reports[0]["splits"] if not n.endswith(SKIP_SUFFIX)]
    ours = {n: reports[0]["splits"][n]["2afc"]["LPIPS-Sat"] for n in splits}
    base = {n: [r["splits"][n]["2afc"][UNTRAINED] for r in reports] for n in splits}
    above_all = [n for n in splits if all(ours[n] > b for b in base[n])]
    close = [n for n in splits if n not in above_all]
    means = [statistics.mean(r["splits"][n]["2afc"][UNTRAINED] for n in splits) for r in reports]
    pct = lambda v: f"{100 * v:.1f}"
    parts = [f"`{n}`: {name} {pct(ours[n])}, untrained " + ", ".join(pct(b) for b in base[n])
             + f" (above {sum(ours[n] > b for b in base[n])} of {len(seeds)})" for n in close]
    return (f"**Untrained baselines of {len(seeds)} initialisations** (seeds {', '.join(map(str, seeds))}; the same input, registration, "
            f"heads recipe and judgments, `calibrate --untrained-seed`): {name} is above all of them on {len(above_all)} of {len(splits)} "
            f"splits (the SR-scale splits aside); " + ("; ".join(parts) if parts else "none below") + ". Mean over those splits: "
            f"{name} {pct(statistics.mean(ours.values()))}, untrained " + ", ".join(pct(m) for m in means) + ".")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", type=Path, nargs="+", help="calibrate report.json files; the first one is the shipped run")
    ap.add_argument("--name", default="v5", help="the label of LPIPS-Sat in the line")
    args = ap.parse_args(argv)
    for p in args.reports:
        if not p.is_file():
            print(f"error: {p}: no such report", file=sys.stderr)
            return 2
    print(summary(load(args.reports), args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
