"""The LPIPS-Sat network a ``gapeval`` command uses, and the sha256 that identifies its weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gapeval.scoring.config import RANDOM_WEIGHTS
from lpips_sat.errors import MissingFileError, WeightsError
from lpips_sat.metric import LPIPSSat
from lpips_sat.options import resolve_device
from lpips_sat.registry import DEFAULT_NAME, sha256_file


def load_metric(weights: str | Path | LPIPSSat | None = None, device: str | None = None) -> tuple[LPIPSSat, str, str | None]:
    """``(metric, label, sha256)`` for a registry name, a ``.safetensors`` path, ``"random-tiny"`` or an instance.

    ``sha256`` identifies the weights: the file's hash, or for an in-memory network the hash of its tensors.
    """
    if isinstance(weights, LPIPSSat):
        metric = weights
    elif str(weights) == RANDOM_WEIGHTS:
        metric = LPIPSSat.random()
    else:
        name = str(weights or DEFAULT_NAME)
        try:
            metric = LPIPSSat(name)
        except MissingFileError as exc:  # absent: say how to run without them; a present but corrupt file says so itself
            hint = (
                f"\n  The shipped weights {DEFAULT_NAME!r} are not installed; reinstall lpips-sat, or use `--weights {RANDOM_WEIGHTS}` "
                "(a tiny random network for testing only: its numbers mean nothing)."
                if name == DEFAULT_NAME
                else ""
            )
            raise WeightsError(f"{exc}{hint}") from exc
    if device:
        metric = metric.to(resolve_device(device))
    sha = metric.sha256
    if sha is None and weights is not None and not isinstance(weights, LPIPSSat) and Path(str(weights)).is_file():
        sha = sha256_file(str(weights))
    if sha is None:
        digest = hashlib.sha256()
        for key, tensor in sorted(metric.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        sha = digest.hexdigest()
    return metric, metric.name, sha
