"""Memory and time growth of ``gapeval score`` with image size, each size in a fresh process (see memory_probe.py).

The suite runs 1024² and 2048² (about a minute); the 8192² figure of docs/performance.md comes from
``python3 benchmarks/memory_probe.py`` (1024² .. 8192², about 10 minutes on one thread).
"""

from __future__ import annotations

from typing import Any

import memory_probe
from conftest import RESULTS, THREADS, measure, summary

SIZES = [1024, 2048]


def bench_memory_growth(benchmark: Any) -> None:
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(memory_probe.probe(SIZES, THREADS))

    measure(benchmark, run, group="memory-growth", label="probe 1024², 2048²", rounds=1)
    benchmark.extra_info.update(out)
    RESULTS[("memory-growth", "probe 1024², 2048²")]["probe"] = out


@summary
def memory_summary(results: dict) -> list[str]:
    rec = results.get(("memory-growth", "probe 1024², 2048²"))
    if not rec:
        return []
    p = rec["probe"]
    lines = ["## Memory and time growth of one scored pair (fresh process per size)", "",
             "| size | seconds | Mpx/s | baseline MiB | peak RSS MiB | peak - baseline MiB |", "|---|---|---|---|---|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['size']}² | {r['seconds']:.1f} | {r['pixels'] / r['seconds'] / 1e6:.3f} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | "
                     f"{r['peak_mib'] - r['baseline_mib']:.0f} |")
    if "time_slope" in p:
        lines.append(f"\nlog-log slope vs pixels: time {p['time_slope']:.2f} (1 = linear), peak RSS {p['peak_slope']:.2f} (0 = flat). "
                     "8192²: run benchmarks/memory_probe.py.")
    return lines
