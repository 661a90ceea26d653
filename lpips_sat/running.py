"""Running mean of LPIPS-Sat over batches: a ``torchmetrics.Metric`` when torchmetrics is installed.

:class:`LPIPSSatMetric` keeps a float64 distance sum and a sample count as metric states reduced by summation,
so under DDP ``compute()`` all-reduces them and every rank gets the mean over all ranks' samples; it works in a
``torchmetrics.MetricCollection`` and has ``plot()``. The mean over all updates equals one call of the metric
on the concatenated batches.

Without torchmetrics (a base ``pip install lpips-sat``), the same class is built on :class:`_PlainMetric`, a
small stand-in with the same ``update`` / ``compute`` / ``reset`` / ``forward`` contract on one process: no
distributed sync, no ``plot()``, no ``MetricCollection`` (install ``lpips-sat[metrics]`` for those).
``import lpips_sat`` never imports this module, so the metric itself stays free of torchmetrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lpips_sat.errors import LPIPSSatError
from lpips_sat.metric import LPIPSSat
from lpips_sat.registry import DEFAULT_NAME

log = logging.getLogger(__name__)

METRICS_HINT = 'pip install "lpips-sat[metrics]"'


class _PlainMetric(nn.Module):
    """Single-process stand-in for ``torchmetrics.Metric`` (states with ``"sum"`` / ``"cat"`` reduction only).

    ``update`` runs without autograd; ``forward`` accumulates the batch into the states and returns the batch's own
    value (with gradients, as torchmetrics' ``forward`` with ``full_state_update=False``).
    """

    higher_is_better: bool | None = None
    is_differentiable: bool | None = None
    full_state_update: bool | None = None

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            raise LPIPSSatError(f"options {sorted(kwargs)} are torchmetrics.Metric options; {METRICS_HINT}")
        super().__init__()
        self._defaults: dict[str, torch.Tensor | list] = {}
        self._reductions: dict[str, str] = {}
        self._enable_grad = False
        self.update: Callable[..., None] = self._wrap_update(self.update)  # type: ignore[method-assign]

    def _wrap_update(self, update: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any, **kwargs: Any) -> None:
            with torch.set_grad_enabled(self._enable_grad):
                update(*args, **kwargs)
        return wrapped

    def add_state(self, name: str, default: torch.Tensor | list, dist_reduce_fx: str, persistent: bool = False) -> None:
        if dist_reduce_fx not in ("sum", "cat"):
            raise ValueError(f"_PlainMetric supports 'sum' and 'cat' states, not {dist_reduce_fx!r}")
        self._defaults[name], self._reductions[name] = default, dist_reduce_fx
        if isinstance(default, torch.Tensor):
            self.register_buffer(name, default.clone(), persistent=persistent)
        else:
            setattr(self, name, [])

    def reset(self) -> None:
        for name, default in self._defaults.items():
            if isinstance(default, torch.Tensor):
                setattr(self, name, default.clone().to(getattr(self, name).device))
            else:
                setattr(self, name, [])

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        saved = {name: getattr(self, name) for name in self._defaults}
        self.reset()
        self._enable_grad = True
        try:
            self.update(*args, **kwargs)
            batch_value = self.compute()
        finally:
            self._enable_grad = False
            batch = {name: getattr(self, name) for name in self._defaults}
            with torch.no_grad():
                for name, old in saved.items():
                    new = batch[name]
                    setattr(self, name, old + new.detach() if self._reductions[name] == "sum" else old + [v.detach() for v in new])
        return batch_value

    def plot(self, *args: Any, **kwargs: Any) -> Any:
        raise LPIPSSatError(f"plot() needs torchmetrics; {METRICS_HINT}")


try:  # torchmetrics is an optional extra; see the module docstring
    from torchmetrics import Metric as _MetricBase

    HAVE_TORCHMETRICS = True
except ImportError:  # pragma: no cover - exercised in a subprocess by tests/test_running.py
    _MetricBase = _PlainMetric  # type: ignore[assignment,misc]
    HAVE_TORCHMETRICS = False


class LPIPSSatMetric(_MetricBase):
    """Mean LPIPS-Sat distance over every sample seen since the last :meth:`reset`.

    Args:
        metric: an :class:`LPIPSSat` instance to use (shared, not copied); built from the keywords below if ``None``.
        weights, bands, input_range, normalize: passed to :class:`LPIPSSat` when ``metric`` is ``None``.
        keep_values: also keep each sample's distance (for confidence intervals: :meth:`values`).
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``process_group``, ``dist_sync_on_step`` ...).

    ``update`` returns nothing (torchmetrics' contract); ``forward`` (calling the object) returns the batch's mean
    distance, differentiable with respect to the inputs, and also accumulates the batch.

    Example:
        >>> import torch
        >>> from lpips_sat import LPIPSSat
        >>> from lpips_sat.running import LPIPSSatMetric
        >>> running = LPIPSSatMetric(LPIPSSat.random())
        >>> hr = torch.rand(2, 4, 32, 32) * 0.3
        >>> running.update(hr, hr)
        >>> float(running.compute()), running.count
        (0.0, 2)
    """

    higher_is_better = False
    is_differentiable = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_legend_name = "LPIPS-Sat"
    #: pyiqa's name for the direction: a lower distance is better.
    lower_better = True

    def __init__(self, metric: LPIPSSat | None = None, *, weights: str | Path = DEFAULT_NAME, bands: str | Sequence[str] | None = None,
                 input_range: str = "reflectance", normalize: bool | None = None, keep_values: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric if metric is not None else LPIPSSat(weights, bands=bands, input_range=input_range, normalize=normalize)
        self.keep_values = keep_values
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        if keep_values:
            self.add_state("per_sample", [], dist_reduce_fx="cat")

    @property
    def score_range(self) -> tuple[float, float]:
        """Smallest and largest possible distance of the wrapped metric (see :attr:`LPIPSSat.score_range`)."""
        return self.metric.score_range

    @property
    def count(self) -> int:
        """Number of samples accumulated (on this process)."""
        return int(self.n)

    def update(self, sr: torch.Tensor, hr: torch.Tensor) -> None:
        """Add a batch ((N, C, H, W) each)."""
        d = self.metric(sr, hr)
        self.total = self.total + d.double().sum().to(self.total.device)
        self.n = self.n + d.numel()
        if self.keep_values:
            self.per_sample.append(d.detach().float())

    def compute(self) -> torch.Tensor:
        """Mean distance (float64 scalar) over all samples since the last reset (all processes under DDP).

        Raises:
            LPIPSSatError: nothing was accumulated (a mean of zero samples is undefined, not 0).
        """
        if int(self.n) == 0:
            raise LPIPSSatError("LPIPSSatMetric.compute() called before any update(); nothing to average")
        return self.total / self.n

    def values(self) -> torch.Tensor:
        """This process's per-sample distances since the last reset (needs ``keep_values=True``), on the CPU."""
        if not self.keep_values:
            raise LPIPSSatError("per-sample values were not kept; create LPIPSSatMetric(..., keep_values=True)")
        kept = self.per_sample
        if isinstance(kept, torch.Tensor):  # torchmetrics turns a synced list state into one tensor
            return kept.detach().float().cpu()
        return torch.cat([v.cpu() for v in kept]) if kept else torch.zeros(0)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Accumulate the batch and return its mean distance (differentiable). The inputs are checked first, so a
        refused batch (:class:`~lpips_sat.errors.InputError`) leaves the accumulated state as it was: torchmetrics'
        ``forward`` resets the state before its ``update`` and would lose it on an exception there."""
        with torch.no_grad():
            self.metric.prepare_pair(sr, hr)
        return super().forward(sr, hr)

    def merge(self, other: "LPIPSSatMetric") -> None:
        """Add another accumulator's state to this one (combining workers or shards by hand)."""
        if hasattr(self, "_computed"):
            self._computed = None  # torchmetrics caches compute(); the merged state needs a fresh one
        with torch.no_grad():
            self.total = self.total + other.total.to(self.total.device)
            self.n = self.n + other.n.to(self.n.device)
            if self.keep_values:
                self.per_sample = list(self.per_sample) + [v.to(self.total.device) for v in other.per_sample]

    def plot(self, val: torch.Tensor | Sequence[torch.Tensor] | None = None, ax: Any = None) -> Any:
        """Plot one value or a sequence of values (default: the current :meth:`compute`); needs torchmetrics and
        matplotlib. Returns ``(figure, axes)``."""
        if not HAVE_TORCHMETRICS:
            return super().plot(val, ax)
        return self._plot(val, ax)

    def extra_repr(self) -> str:
        return f"count={self.count}, keep_values={self.keep_values}"
