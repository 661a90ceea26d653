"""Running mean of LPIPS-Sat over batches: ``update`` / ``compute`` / ``reset`` (torchmetrics-style).

The state is a float64 sum and a sample count held as buffers, so ``.to(device)`` moves it with the model
and :meth:`LPIPSSatMetric.merge` combines the states of several workers (e.g. after an all-gather).
The per-sample mean over all updates equals one call of the metric on the concatenated batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lpips_sat.errors import LPIPSSatError
from lpips_sat.metric import LPIPSSat
from lpips_sat.registry import DEFAULT_NAME

log = logging.getLogger(__name__)


class LPIPSSatMetric(nn.Module):
    """Mean LPIPS-Sat distance over every sample seen since the last :meth:`reset`.

    Args:
        metric: an :class:`LPIPSSat` instance to use (shared, not copied); built from the keywords below if ``None``.
        weights, bands, input_range: passed to :class:`LPIPSSat` when ``metric`` is ``None``.
        keep_values: also keep each sample's distance (for confidence intervals: :meth:`values`).

    Example:
        >>> import torch
        >>> from lpips_sat import LPIPSSat
        >>> from lpips_sat.running import LPIPSSatMetric
        >>> running = LPIPSSatMetric(LPIPSSat.random())
        >>> hr = torch.rand(2, 4, 32, 32) * 0.3
        >>> running.update(hr, hr).tolist()
        [0.0, 0.0]
        >>> float(running.compute()), running.count
        (0.0, 2)
    """

    def __init__(self, metric: LPIPSSat | None = None, *, weights: str | Path = DEFAULT_NAME, bands: str | Sequence[str] | None = None,
                 input_range: str = "reflectance", keep_values: bool = False) -> None:
        super().__init__()
        self.metric = metric if metric is not None else LPIPSSat(weights, bands=bands, input_range=input_range)
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("n", torch.zeros((), dtype=torch.long))
        self.keep_values = keep_values
        self._values: list[torch.Tensor] = []

    @property
    def count(self) -> int:
        """Number of samples accumulated."""
        return int(self.n)

    @torch.no_grad()
    def update(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Add a batch ((N, C, H, W) each); returns its (N,) distances (detached)."""
        d = self.metric(sr, hr).detach()
        self.total += d.double().sum().to(self.total.device)
        self.n += d.numel()
        if self.keep_values:
            self._values.append(d.float().cpu())
        return d

    def compute(self) -> torch.Tensor:
        """Mean distance (float64 scalar) over all samples since the last reset.

        Raises:
            LPIPSSatError: nothing was accumulated (a mean of zero samples is undefined, not 0).
        """
        if int(self.n) == 0:
            raise LPIPSSatError("LPIPSSatMetric.compute() called before any update(); nothing to average")
        return self.total / self.n

    def values(self) -> torch.Tensor:
        """All per-sample distances seen since the last reset (needs ``keep_values=True``)."""
        if not self.keep_values:
            raise LPIPSSatError("per-sample values were not kept; create LPIPSSatMetric(..., keep_values=True)")
        return torch.cat(self._values) if self._values else torch.zeros(0)

    def reset(self) -> None:
        """Forget every accumulated sample."""
        self.total.zero_()
        self.n.zero_()
        self._values.clear()

    def merge(self, other: "LPIPSSatMetric") -> None:
        """Add another accumulator's state to this one (combining workers or shards)."""
        self.total += other.total.to(self.total.device)
        self.n += other.n.to(self.n.device)
        if self.keep_values:
            self._values.extend(other._values)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Update with the batch and return the batch's own mean distance (as torchmetrics' ``forward``)."""
        return self.update(sr, hr).mean()

    def extra_repr(self) -> str:
        return f"count={self.count}, keep_values={self.keep_values}"
