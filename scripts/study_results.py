#!/usr/bin/env python3
"""Run (or resume) the small study and write its report into docs/study_results.md and docs/figures/study/.

    OMP_NUM_THREADS=1 python3 scripts/study_results.py            # runs/study_small; resumes what is finished

The part of docs/study_results.md above the line ``<!-- generated: … -->`` (the reading of the numbers) is kept; the
rest is replaced by the study's report.md with its figures copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARK = "<!-- generated: everything below is written by scripts/study_results.py from the study's report.md -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "study_small.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "study_small"))
    parser.add_argument("--docs-only", action="store_true", help="only copy an existing report (no study run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.docs_only:
        from gapeval.cli import main as gapeval

        rc = gapeval(["study", "run", args.config, "--out", str(out)])
        if rc:
            return rc
    figs = ROOT / "docs" / "figures" / "study"
    figs.mkdir(parents=True, exist_ok=True)
    for png in (out / "figures").glob("*.png"):
        shutil.copyfile(png, figs / png.name)
    doc = ROOT / "docs" / "study_results.md"
    head = doc.read_text().split(MARK)[0].rstrip() + "\n\n" if doc.is_file() and MARK in doc.read_text() else "# Study results\n\n"
    body = (out / "report.md").read_text().replace("](figures/", "](figures/study/").replace(str(ROOT) + "/", "")
    doc.write_text(head + MARK + "\n\n" + body.replace("# Study report:", "## Study report:", 1))
    print(f"wrote {doc} and {figs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
