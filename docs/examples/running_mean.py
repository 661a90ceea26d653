"""Running-mean LPIPS-Sat over a data loader with ``lpips_sat.running.LPIPSSatMetric`` (update / compute / reset).

    python docs/examples/running_mean.py
    LPIPS_SAT_EXAMPLE_TINY=1 python docs/examples/running_mean.py

Scores bilinear upsampling of block-averaged LR against the HR targets, batch by batch. The running mean
equals one metric call on all samples at once (checked below); ``keep_values=True`` keeps per-sample
distances for a bootstrap confidence interval (``gapeval.stats.bootstrap_ci``, needs scipy).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lpips_sat.running import LPIPSSatMetric

from common import make_metric, toy_pairs  # docs/examples/common.py


def main() -> float:
    metric = make_metric()
    lr, hr = toy_pairs(10, seed=3)
    loader = DataLoader(TensorDataset(lr, hr), batch_size=4)  # batches of 4, 4, 2
    running = LPIPSSatMetric(metric, keep_values=True)
    for lr_batch, hr_batch in loader:
        sr = F.interpolate(lr_batch, scale_factor=2, mode="bilinear", align_corners=False)
        running.update(sr, hr_batch)
    mean = float(running.compute())
    all_at_once = float(metric(F.interpolate(lr, scale_factor=2, mode="bilinear", align_corners=False), hr).mean())
    assert abs(mean - all_at_once) <= 1e-6 * max(abs(all_at_once), 1e-12), (mean, all_at_once)
    line = f"bilinear x2: LPIPS-Sat {mean:.5f} over {running.count} samples (single call: {all_at_once:.5f})"
    try:
        from gapeval.stats import bootstrap_ci

        low, high = bootstrap_ci(running.values().numpy(), n_resamples=500)
        line += f", 95% bootstrap CI [{low:.5f}, {high:.5f}]"
    except ImportError:  # scipy is part of the [eval] extra
        pass
    print(line)
    running.reset()
    assert running.count == 0
    return mean


if __name__ == "__main__":
    main()
