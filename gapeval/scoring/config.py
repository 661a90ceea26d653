"""The configuration of a ``gapeval score`` run: everything that changes its numbers (hashed to mark rows for resume)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from gapeval.align import ALIGN_MODES, DEFAULT_MAX_SHIFT, HARMONIZE_MODES
from gapeval.grids import RESAMPLING_METHODS
from gapeval.metrics.consistency import CORRECTNESS_LAMBDAS, HF_THRESHOLD
from lpips_sat.errors import InputError
from lpips_sat.metric import MIN_SIZE

#: ``--weights random-tiny``: a tiny random-weight network (``LPIPSSat.random()``), for tests only.
RANDOM_WEIGHTS = "random-tiny"
#: Default window (px) for reading, classical metrics and LPIPS-Sat tiles.
DEFAULT_TILE = 512
#: What a prediction's own invalid pixels (NaN/inf/nodata where the target is valid) do to its pair: ``fail`` marks
#: the pair failed (no numbers; exit 3), ``mask`` scores only the prediction's valid pixels (and counts the others).
INVALID_PRED_POLICIES = ("fail", "mask")
#: ``--protocol`` values: gapeval's own LR-consistency/correctness columns, or opensr-test 1.3.3's (docs/metrics.md).
PROTOCOLS = ("gapeval", "opensr-test")


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that changes the numbers of a run (its hash marks rows for ``--resume``)."""

    weights: str
    weights_sha256: str | None
    bands: tuple[str, ...]
    with_lr: bool = False
    pred_bands: str | None = None
    target_bands: str | None = None
    lr_bands: str | None = None
    pred_scale: float | None = None
    target_scale: float | None = None
    lr_scale: float | None = None
    data_range: float = 1.0
    resample: str | None = None
    tile: int = DEFAULT_TILE
    sr_factor: float | None = None
    patch: int = 8
    hf_threshold: float = HF_THRESHOLD
    lambdas: tuple[float, float, float] = CORRECTNESS_LAMBDAS
    pattern: str | None = None
    protocol: str = "gapeval"
    invalid_pred: str = "fail"
    align: str = "none"
    harmonize: str = "none"
    max_shift: float = DEFAULT_MAX_SHIFT
    report_raw: bool = False

    @property
    def aligned(self) -> bool:
        """Whether the target is resampled/harmonised onto each prediction before the full-reference metrics."""
        return self.align != "none" or self.harmonize != "none"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "opensr-test" and not self.with_lr:
            raise InputError("--protocol opensr-test needs the LR inputs (--lr DIR): all its values compare SR with LR")
        if not self.data_range > 0:
            raise InputError(f"--data-range must be positive, got {self.data_range}")
        if self.tile < MIN_SIZE:
            raise InputError(f"--tile must be at least {MIN_SIZE} px (LPIPS-Sat's smallest input), got {self.tile}")
        if self.tile % self.patch:
            raise InputError(f"--tile ({self.tile}) must be a multiple of the correctness patch ({self.patch})")
        if self.resample is not None and self.resample not in RESAMPLING_METHODS:
            raise InputError(f"--resample must be one of {RESAMPLING_METHODS}, got {self.resample!r}")
        if self.invalid_pred not in INVALID_PRED_POLICIES:
            raise InputError(f"--invalid-pred must be one of {INVALID_PRED_POLICIES}, got {self.invalid_pred!r}")
        if self.align not in ALIGN_MODES:
            raise InputError(f"--align must be one of {', '.join(ALIGN_MODES)}, got {self.align!r}")
        if self.harmonize not in HARMONIZE_MODES:
            raise InputError(f"--harmonize must be one of {', '.join(HARMONIZE_MODES)}, got {self.harmonize!r}")
        if not self.max_shift > 0:
            raise InputError(f"--max-shift must be positive, got {self.max_shift}")
        if self.aligned and self.protocol == "opensr-test":
            raise InputError("--protocol opensr-test harmonises SR onto HR by itself (histogram matching and phase correlation, as "
                             "opensr-test does); use it with --align none --harmonize none")
        if self.report_raw and not self.aligned:
            raise InputError("--report-raw adds the unaligned values next to the aligned ones; it needs --align or --harmonize")
        if self.sr_factor is not None and not self.sr_factor > 1:
            raise InputError(f"--sr-factor must be > 1 (e.g. 4 for 10 m -> 2.5 m), got {self.sr_factor}")

    def hash(self) -> str:
        """Short sha256 of the configuration and the gapeval version."""
        from gapeval import __version__

        fields = asdict(self)
        if not self.aligned:  # runs without alignment keep the hash they had before the option existed (resumable)
            for key in ("align", "harmonize", "max_shift", "report_raw"):
                fields.pop(key)
        text = json.dumps({**fields, "gapeval": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
