"""One-off calls: ``lpips_sat(sr, hr)`` with the loaded network cached per (weights, device)."""

from __future__ import annotations

from functools import lru_cache

import torch

from lpips_sat.metric import LPIPSSat
from lpips_sat.registry import DEFAULT_NAME


@lru_cache(maxsize=4)
def _cached(weights: str, device: str, input_range: str, normalize: bool | None) -> LPIPSSat:
    return LPIPSSat(weights, input_range=input_range, normalize=normalize).to(device)


def lpips_sat(sr: torch.Tensor, hr: torch.Tensor, *, weights: str = DEFAULT_NAME, input_range: str = "reflectance",
              normalize: bool | None = None, spatial: bool = False) -> torch.Tensor:
    """LPIPS-Sat distance of ``sr`` to ``hr`` ((N, C, H, W) reflectance, bands B04,B03,B02,B08); see :class:`LPIPSSat`
    (``normalize``: lpips' [0, 1] / [-1, 1] input conventions).

    The network is loaded once per ``(weights, device, input_range, normalize)`` and reused; gradients flow to ``sr``/``hr``.
    """
    return _cached(str(weights), str(sr.device), input_range, normalize)(sr, hr, spatial=spatial)
