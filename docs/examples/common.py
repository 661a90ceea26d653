"""Shared pieces of the integration examples: the metric choice, toy Sentinel-2-like data, a tiny SR network, a registry.

``LPIPS_SAT_EXAMPLE_TINY=1`` switches every example to a tiny random-weight metric, small images and a few
steps (this is how the test-suite runs them); without it they use the shipped weights (``LPIPSSat()``).
``LPIPS_SAT_EXAMPLE_DATA=/path/scenes.npy`` takes HR crops from a (time, rows, cols, 13) reflectance array
(e.g. ``shared/data/s2/s2_l1c_reference_scenes.npy``) instead of synthetic fields.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpips_sat import LPIPSSat

TINY = os.environ.get("LPIPS_SAT_EXAMPLE_TINY", "") not in ("", "0")
SIZE = 32 if TINY else 96  # HR side in pixels (LPIPS-Sat needs >= 32)
STEPS = 12 if TINY else 300


def make_metric(**kwargs) -> LPIPSSat:
    """The shipped LPIPS-Sat (default) or a tiny random-weight stand-in when ``LPIPS_SAT_EXAMPLE_TINY=1``."""
    return LPIPSSat.random(**kwargs) if TINY else LPIPSSat(**kwargs)


def toy_pairs(n: int, size: int = SIZE, factor: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) reflectance pairs, bands R, G, B, NIR; LR is the HR block-averaged by ``factor``.

    Synthetic HR: smooth random fields (fields and parcels at several scales), band-correlated like vegetation
    and soil, reflectance 0.02..0.45. Real crops are used instead when ``LPIPS_SAT_EXAMPLE_DATA`` is set.
    """
    gen = torch.Generator().manual_seed(seed)
    path = os.environ.get("LPIPS_SAT_EXAMPLE_DATA")
    if path:
        scenes = np.load(path, mmap_mode="r")  # (time, rows, cols, 13) reflectance, B01..B12
        t, rows, cols, _ = scenes.shape
        crops = []
        for _ in range(n):
            i = int(torch.randint(t, (1,), generator=gen))
            r = int(torch.randint(rows - size + 1, (1,), generator=gen))
            c = int(torch.randint(cols - size + 1, (1,), generator=gen))
            crops.append(np.asarray(scenes[i, r:r + size, c:c + size][..., [3, 2, 1, 7]]).transpose(2, 0, 1))
        hr = torch.from_numpy(np.stack(crops)).float()
    else:
        parcels = F.interpolate(torch.rand(n, 1, size // 16, size // 16, generator=gen), size=(size, size), mode="nearest")
        texture = sum(F.interpolate(torch.rand(n, 1, size // s, size // s, generator=gen), size=(size, size), mode="bilinear",
                                    align_corners=False) for s in (8, 4, 2))
        field = (2 * parcels + texture) / 5
        veg = torch.rand(n, 1, 1, 1, generator=gen)
        hr = torch.cat([0.05 + 0.15 * field * (1 - veg), 0.05 + 0.12 * field, 0.04 + 0.1 * field * (1 - veg), 0.1 + 0.35 * field * veg], dim=1)
    lr = F.avg_pool2d(hr, factor)
    return lr, hr


class TinySR(nn.Module):
    """A two-layer x2 super-resolution network: bilinear upsampling plus a learned residual (PixelShuffle)."""

    def __init__(self, bands: int = 4, width: int = 16, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.body = nn.Sequential(nn.Conv2d(bands, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, bands * factor**2, 3, padding=1))
        self.shuffle = nn.PixelShuffle(factor)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(lr, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return up + self.shuffle(self.body(lr))


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Progress lines for a loop of ``total`` steps: ``step k/total <text>  <elapsed> elapsed, ETA <rest>``.

    A line is printed after the first step (so the speed shows early), every ``every`` steps, after the last step,
    and whenever ``interval`` seconds passed since the previous line. The ETA is the mean time per step so far
    times the steps left.
    """

    def __init__(self, total: int, every: int, interval: float = 20.0) -> None:
        self.total, self.every, self.interval = total, max(1, every), interval
        self.start = self.last = time.perf_counter()

    def __call__(self, step: int, text: str = "") -> bool:
        """Report that 0-based ``step`` finished; returns whether a line was printed."""
        now = time.perf_counter()
        done = step + 1
        if not (step == 0 or done == self.total or done % self.every == 0 or now - self.last >= self.interval):
            return False
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done)
        print(f"step {done:4d}/{self.total}  {text}  {_duration(elapsed)} elapsed, ETA {_duration(eta)}", flush=True)
        self.last = now
        return True


class Registry:
    """Name -> class map filled by a decorator (the pattern of ``basicsr.utils.registry.Registry``, which pyiqa reuses)."""

    def __init__(self, name: str) -> None:
        self.name, self._items = name, {}

    def register(self) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if cls.__name__ in self._items:
                raise KeyError(f"{cls.__name__} is already registered in {self.name}")
            self._items[cls.__name__] = cls
            return cls
        return deco

    def get(self, name: str) -> type:
        if name not in self._items:
            raise KeyError(f"No {name!r} in registry {self.name}; known: {sorted(self._items)}")
        return self._items[name]
