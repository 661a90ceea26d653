"""Peak memory and time of ``gapeval score`` on one 4-band pair, from 1024² to 8192² px, each in a fresh process.

For every size a child process writes a target and a prediction (real Sentinel-2 B04/B03/B02/B08 reflectance,
mirrored to the size; the prediction is the target with a gain and noise), as tiled DEFLATE uint16 GeoTIFFs with
a 1e-4 scale; a second child process imports the libraries, builds ``LPIPSSat.random(width_div=1)`` (a full-size
ResNet-18, the size of the shipped metric), notes its peak RSS (``baseline``), scores the pair with ``gapeval.score``
(tile 512, batch 8) and reports the time and its peak RSS. The parent also reads the child's peak RSS from
``os.wait4`` (the kernel's account, independent of the child). Then it fits log-log slopes of time and of memory
against pixels (1 = linear; 0 = flat).

    python3 benchmarks/memory_probe.py                       # 1024, 2048, 4096, 8192 (about 10 min on 1 thread)
    python3 benchmarks/memory_probe.py --sizes 1024,2048     # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
STRIP = 512


def _reflect(idx: Any, n: int) -> Any:
    """Indices mirrored into 0..n-1 (period 2n - 2), to tile an image of n pixels to any size."""
    period = 2 * n - 2
    idx = idx % period
    return (period - idx) * (idx >= n) + idx * (idx < n)


def make_pair(folder: Path, size: int) -> None:
    """Write ``target/scene.tif`` and ``pred/scene.tif`` of ``size`` x ``size`` px, strip by strip (bounded memory)."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    sys.path.insert(0, str(HERE.parent))
    from conftest import s2_rgbn

    src = s2_rgbn()
    cols = _reflect(np.arange(size), src.shape[2])
    rng = np.random.default_rng(size)
    gain = np.array([1.03, 0.98, 1.01, 0.97], np.float32)[:, None, None]
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "crs": "EPSG:32618", "tiled": True,
                   "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1, "predictor": 2, "BIGTIFF": "IF_SAFER",
                   "transform": Affine(2.5, 0, 435730, 0, -2.5, 4179460)}
    paths = {k: folder / k / "scene.tif" for k in ("target", "pred")}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(paths["target"], "w", **profile) as t, rasterio.open(paths["pred"], "w", **profile) as p:
        for ds in (t, p):
            ds.scales = (1e-4,) * 4
            ds.descriptions = ("B04", "B03", "B02", "B08")
        for r0 in range(0, size, STRIP):
            rows = _reflect(np.arange(r0, min(size, r0 + STRIP)), src.shape[1])
            hr = src[:, rows][:, :, cols]
            pred = hr * gain + 0.004 * rng.standard_normal(hr.shape, dtype=np.float32)
            win = Window(0, r0, size, len(rows))
            t.write(np.clip(np.round(hr * 1e4), 0, 65535).astype(np.uint16), window=win)
            p.write(np.clip(np.round(pred * 1e4), 0, 65535).astype(np.uint16), window=win)


def score_pair(folder: Path, threads: int) -> dict[str, Any]:
    """Score the pair in this process; returns seconds, baseline and peak RSS (MiB) and the LPIPS-Sat value."""
    import resource

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    from gapeval.score import score
    from lpips_sat import LPIPSSat

    metric = LPIPSSat.random(width_div=1)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    result = score({"pred": folder / "pred"}, folder / "target", metric=metric, tile=512, batch_size=8)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec = result.records[0]
    return {"seconds": seconds, "baseline_mib": baseline, "peak_mib": peak, "lpips_sat": rec["lpips_sat"], "lpips_tiles": rec["lpips_tiles"],
            "psnr": rec["psnr"]}


def _child(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run this script as a child; returns its stdout and its peak RSS in MiB from ``os.wait4``."""
    proc = subprocess.Popen([sys.executable, str(HERE), *args], stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"child {args} failed with exit code {proc.returncode}")
    return out, usage.ru_maxrss / 1024


def probe(sizes: list[int], threads: int = 1, workdir: Path | None = None) -> dict[str, Any]:
    """Make and score one pair per size, each in fresh processes; returns per-size records and the fitted slopes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for size in sizes:
            folder = Path(tmp) / str(size)
            t0 = time.perf_counter()
            _child(["_make", str(folder), str(size)], env)
            made = time.perf_counter() - t0
            out, rss = _child(["_score", str(folder), str(threads)], env)
            rec = json.loads(out.strip().splitlines()[-1])
            rec.update(size=size, pixels=size * size, wait4_peak_mib=rss, make_seconds=made,
                       file_mib=sum(p.stat().st_size for p in folder.rglob("*.tif")) / 2**20)
            rows.append(rec)
            print(f"{size:>5}² px: {rec['seconds']:8.1f} s, peak RSS {rec['peak_mib']:7.0f} MiB (wait4 {rss:7.0f}), "
                  f"baseline {rec['baseline_mib']:6.0f} MiB, {rec['pixels'] / rec['seconds'] / 1e6:.3f} Mpx/s", file=sys.stderr, flush=True)
            for p in folder.rglob("*.tif"):
                p.unlink()
    return {"threads": threads, "rows": rows, **slopes(rows)}


def slopes(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares slopes of log(seconds), log(peak RSS) and log(peak - baseline) against log(pixels)."""
    if len(rows) < 2:
        return {}

    def fit(ys: list[float]) -> float:
        xs = [math.log(r["pixels"]) for r in rows]
        ys = [math.log(max(y, 1e-9)) for y in ys]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

    return {"time_slope": fit([r["seconds"] for r in rows]), "peak_slope": fit([r["peak_mib"] for r in rows]),
            "above_baseline_slope": fit([r["peak_mib"] - r["baseline_mib"] for r in rows])}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_make":
        make_pair(Path(argv[1]), int(argv[2]))
        return 0
    if argv and argv[0] == "_score":
        print(json.dumps(score_pair(Path(argv[1]), int(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="comma-separated image sides in px")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")), help="torch threads in the scorer")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "benchmarks" / "memory.json", help="where to write the results")
    parser.add_argument("--workdir", type=Path, help="folder for the temporary GeoTIFFs (default: the system temp folder)")
    args = parser.parse_args(argv)
    result = probe([int(s) for s in args.sizes.split(",")], args.threads, args.workdir)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("| size | Mpx | seconds | Mpx/s | baseline MiB | peak RSS MiB | peak - baseline MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['size']}² | {r['pixels'] / 1e6:.1f} | {r['seconds']:.1f} | {r['pixels'] / r['seconds'] / 1e6:.3f} | {r['baseline_mib']:.0f} | "
              f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} |")
    if "time_slope" in result:
        print(f"\nlog-log slopes vs pixels: time {result['time_slope']:.3f} (1 = linear), peak RSS {result['peak_slope']:.3f}, "
              f"peak above baseline {result['above_baseline_slope']:.3f} (0 = flat)")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
