"""``gapeval study run STUDY.yaml [--smoke] [--out DIR]``: the whole 2 x 2 domain-gap study, cached stage by stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapeval.infer.cli_infer import shard_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run", help="run (or resume) a study: train -> infer -> score -> gap -> report",
                       description="Run every stage of a study YAML (see docs/study.md); finished stages are reused, so an "
                                   "interrupted run resumes where it stopped.")
    p.add_argument("config", type=Path, help="study YAML (e.g. examples/study_small.yaml)")
    p.add_argument("--smoke", action="store_true", help="tiny networks, few steps and tiles (minutes on a CPU; checks the pipeline only)")
    p.add_argument("--out", type=Path, help="output folder (default: the YAML's 'out', else runs/study_NAME[_smoke])")
    p.add_argument("--stop-after", choices=["data", "train", "infer", "score", "gap"], help="stop after this stage (a later run continues)")
    p.add_argument("--shard", type=shard_arg, help="k/n or auto (RANK/WORLD_SIZE of torchrun/accelerate): run every n-th train/infer stage; "
                   "needs --stop-after train|infer (see docs/study.md, several GPUs)")


def run(args: argparse.Namespace) -> int:
    from gapeval.study.config import load_config
    from gapeval.study.runner import run_study

    cfg = load_config(args.config, smoke=args.smoke)
    out = args.out
    if out is None:
        given = cfg.raw.get("out")
        out = (cfg.path.parent / str(given)) if given else Path("runs") / f"study_{cfg.name}"
        if cfg.smoke:
            out = out.with_name(out.name + "_smoke")
    tables = run_study(cfg, out, stop_after=args.stop_after, shard=args.shard or (0, 1))
    if not tables:
        print(f"gapeval study: stopped after {args.stop_after}" + (f" (shard {args.shard[0]}/{args.shard[1]})" if args.shard else "") + f"; rerun to continue in {out}")
        return 0
    print(f"gapeval study: report {out / 'report.html'} (Markdown: {out / 'report.md'}, numbers: {out / 'tables.json'})")
    return 0
