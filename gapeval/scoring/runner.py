"""Score many scenes: one after another or in worker threads, with a progress bar; records are handed on as soon
as their scene is done (so an interrupted run keeps them)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from gapeval.scoring import scene
from gapeval.scoring.config import ScoreConfig
from gapeval.scoring.plan import ScenePlan
from lpips_sat.metric import LPIPSSat


def run_plans(
    plans: list[ScenePlan],
    config: ScoreConfig,
    metric: LPIPSSat,
    *,
    batch_size: int,
    maps_dir: Path | None,
    workers: int,
    progress: bool,
    sink: Callable[[Mapping[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Score the scenes (in ``workers`` threads), handing each record to ``sink`` as soon as its scene is done."""
    from tqdm import tqdm

    total = sum(len(p.preds) for p in plans)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=total, unit="pair", desc="gapeval score", disable=not progress or total == 0)
    stop = threading.Event()
    kwargs = dict(batch_size=batch_size, maps_dir=maps_dir)

    def finish(recs: list[dict[str, Any]]) -> None:
        for rec in recs:
            if sink is not None:
                sink(rec)
            records.append(rec)
        bar.update(len(recs))

    try:
        if workers == 1:
            for plan in plans:
                finish(scene.score_scene(plan, config, metric, **kwargs))
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gapeval-score") as pool:
                pending = {pool.submit(scene.score_scene, p, config, metric, stop=stop, **kwargs) for p in plans}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            finish(fut.result())
                except BaseException:
                    stop.set()
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return records
