"""Known backbone + head sets, and verified loading of weight files.

Each :class:`WeightsEntry` carries what is needed to use a checkpoint correctly: the bands it expects,
the normalisation applied to reflectance, where the file lives (shipped in the wheel, or a hub id), its
sha256, source and licence. The normalisation travels with the weights, so a user cannot pair a checkpoint
with the wrong scaling. Shipped files are safetensors with their metadata in the header; a file whose
sha256 differs from the registry is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from lpips_sat.bands import DEFAULT_BANDS, S2_L1C_13
from lpips_sat.errors import MissingFileError, WeightsError


@dataclass(frozen=True)
class WeightsEntry:
    """One backbone (+ optional calibrated heads) the metric knows how to load.

    Attributes:
        name: registry key, e.g. ``lpips-sat-s2-rn18``.
        arch: torchvision ResNet name.
        bands: Sentinel-2 band ids the checkpoint's first convolution takes, in order.
        mean, std: per-band normalisation applied to reflectance (DN / 10000) before the backbone.
        file: file name under ``weights/`` for shipped weights, else ``None``.
        sha256: expected sha256 of ``file`` (shipped) or of the downloaded checkpoint (hub), if known.
        hub_id, hub_filename: Hugging Face location of an external checkpoint.
        heads: ``"calibrated"`` (heads in the file) or ``"ones"`` (uncalibrated LPIPS, all-ones heads).
        source, licence, ssl_method, description: provenance, shown by ``lpips-sat info``.
    """

    name: str
    arch: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    file: str | None = None
    sha256: str | None = None
    hub_id: str | None = None
    hub_filename: str | None = None
    heads: str = "ones"
    source: str = ""
    licence: str = ""
    ssl_method: str = ""
    description: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain-dict view (for JSON summaries and ``lpips-sat info``)."""
        return asdict(self)


_ZERO13 = tuple(0.0 for _ in S2_L1C_13)
_ONE13 = tuple(1.0 for _ in S2_L1C_13)

# External checkpoints: one table, one row per checkpoint (SSL4EO-S12 inputs are DN/10000 = reflectance,
# so their normalisation is the identity on reflectance). Columns:
# name, arch, bands, hub id, hub file, ssl method, source, licence.
_EXTERNAL: tuple[tuple[str, str, tuple[str, ...], str, str, str, str, str], ...] = (
    ("ssl4eo-s12-rn18-moco-13b", "resnet18", S2_L1C_13, "wangyi111/SSL4EO-S12", "B13_rn18_moco_0099_ckpt.pth", "MoCo-v2", "SSL4EO-S12 (Wang et al. 2023)", "CC-BY-4.0"),
    ("ssl4eo-s12-rn50-moco-13b", "resnet50", S2_L1C_13, "wangyi111/SSL4EO-S12", "B13_rn50_moco_0099_ckpt.pth", "MoCo-v2", "SSL4EO-S12 (Wang et al. 2023)", "CC-BY-4.0"),
    ("ssl4eo-s12-rn50-dino-13b", "resnet50", S2_L1C_13, "wangyi111/SSL4EO-S12", "B13_rn50_dino_0099_ckpt.pth", "DINO", "SSL4EO-S12 (Wang et al. 2023)", "CC-BY-4.0"),
    ("ssl4eo-s12-rn50-moco-rgb", "resnet50", ("B04", "B03", "B02"), "wangyi111/SSL4EO-S12", "B3_rn50_moco_0099_ckpt.pth", "MoCo-v2", "SSL4EO-S12 (Wang et al. 2023)", "CC-BY-4.0"),
    ("seco-rn18-1m", "resnet18", ("B04", "B03", "B02"), "", "seco_resnet18_1m.ckpt", "SeCo (MoCo-v2 seasonal contrast)", "SeCo (Mañas et al. 2021)", "Apache-2.0 (code); see SeCo release"),
    ("seco-rn50-1m", "resnet50", ("B04", "B03", "B02"), "", "seco_resnet50_1m.ckpt", "SeCo (MoCo-v2 seasonal contrast)", "SeCo (Mañas et al. 2021)", "Apache-2.0 (code); see SeCo release"),
    ("satlas-rn50-si-rgb", "resnet50", ("B04", "B03", "B02"), "allenai/satlas-pretrain", "sentinel2_resnet50_si_rgb.pth", "supervised multi-task (SatlasPretrain)", "SatlasPretrain (Bastani et al. 2023)", "ODC-BY (weights)"),
)

#: Normalisations (mean, std on reflectance, per checkpoint band) that are not the identity; derivations in
#: docs/backbones.md. SeCo: its quantile stretch + ImageNet statistics expressed on reflectance; Satlas: TCI/255
#: with TCI ~ 255 x reflectance / 0.2 (an approximation: TCI saturates).
_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "seco-rn18-1m": ((0.2454, 0.1885, 0.1471), (0.1158, 0.0887, 0.0750)),
    "seco-rn50-1m": ((0.2454, 0.1885, 0.1471), (0.1158, 0.0887, 0.0750)),
    "satlas-rn50-si-rgb": ((0.0, 0.0, 0.0), (0.2, 0.2, 0.2)),
}

REGISTRY: dict[str, WeightsEntry] = {
    row[0]: WeightsEntry(
        name=row[0], arch=row[1], bands=row[2],
        mean=_NORMALISATION.get(row[0], (_ZERO13[: len(row[2])], None))[0], std=_NORMALISATION.get(row[0], (None, _ONE13[: len(row[2])]))[1],
        hub_id=row[3] or None, hub_filename=row[4], ssl_method=row[5], source=row[6], licence=row[7], heads="ones",
        description=f"{row[6]} {row[1]} ({row[5]}), {len(row[2])} bands; external, loaded from a local file or the hub",
    )
    for row in _EXTERNAL
}

#: The shipped default is registered by :mod:`lpips_sat._shipped` (generated when weights are trained).
DEFAULT_NAME = "lpips-sat-s2-rn18-v5"


def weights_dir() -> Path:
    """Folder holding the shipped safetensors: ``lpips_sat/weights`` in a wheel, ``weights/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights", here.parent / "weights"):
        if candidate.is_dir():
            return candidate
    raise MissingFileError(f"No weights folder next to {here}; the installation is incomplete (reinstall lpips-sat)")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def get_entry(name: str) -> WeightsEntry:
    """Look up a registry entry by name, with an error that lists the known names."""
    _load_shipped()
    if name not in REGISTRY:
        raise WeightsError(f"Unknown weights {name!r}; known: {sorted(REGISTRY)} (or pass a path to a .safetensors file)")
    return REGISTRY[name]


_SHIPPED_LOADED = False


def _load_shipped() -> None:
    """Register every shipped weights file listed in ``weights/index.json`` (name, file, sha256, metadata)."""
    global _SHIPPED_LOADED
    if _SHIPPED_LOADED:
        return
    _SHIPPED_LOADED = True
    try:
        index_path = weights_dir() / "index.json"
    except MissingFileError:
        return
    if not index_path.exists():
        return
    for row in json.loads(index_path.read_text()):
        meta = row["metadata"]
        REGISTRY[row["name"]] = WeightsEntry(
            name=row["name"], arch=meta["arch"], bands=tuple(json.loads(meta["bands"])),
            mean=tuple(json.loads(meta["mean"])), std=tuple(json.loads(meta["std"])), file=row["file"],
            sha256=row["sha256"], heads="calibrated", source=meta.get("source", ""), licence=meta.get("licence", ""),
            ssl_method=meta.get("ssl_method", ""), description=meta.get("description", ""), extra=meta,
        )


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], dtype: torch.dtype = torch.float16) -> str:
    """Write ``tensors`` as safetensors (floating tensors cast to ``dtype``) with ``metadata``; return sha256."""
    from safetensors.torch import save_file

    out = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu() for k, v in tensors.items()}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(out, str(tmp), metadata=dict(metadata))
    tmp.replace(path)
    return sha256_file(path)


def load_weights(path: str | Path, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors weights file (tensors in float32) and its metadata, verifying ``sha256`` if given.

    Raises:
        MissingFileError: the file does not exist.
        WeightsError: the sha256 differs (tampered or corrupt file) or the file is not safetensors.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Weights file {path} does not exist")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsError(f"{path}: the file is present but its sha256 {actual} differs from the registered {sha256}: it is corrupt or was modified (tampered). Reinstall lpips-sat, or pass the file explicitly if you changed it on purpose.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, metadata


def write_index(entries: list[dict]) -> Path:
    """Write ``weights/index.json`` (used by training scripts after saving new weights)."""
    path = weights_dir() / "index.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(path)
    return path


__all__ = ["WeightsEntry", "REGISTRY", "DEFAULT_NAME", "DEFAULT_BANDS", "get_entry", "load_weights", "save_weights", "sha256_file", "weights_dir"]
