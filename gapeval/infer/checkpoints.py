"""Checkpoint access for the adapters: local files and folders, Hugging Face hub ids, sha256, strict loading.

Accepted forms of ``--checkpoint``:

* a local ``.safetensors`` file, or a ``.ckpt/.pth/.pt`` file read only through ``torch.load(weights_only=True)``
  (via :func:`lpips_sat.backbones.read_checkpoint`);
* a local folder in the diffusers layout (``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` …);
* a hub id ``owner/name`` (a diffusers repository) or ``owner/name:path/in/repo.ckpt`` (one file), fetched with
  ``huggingface_hub``. Offline (no network, or ``HF_HUB_OFFLINE=1`` and nothing cached) raises
  :class:`~lpips_sat.errors.OfflineError` telling the user to pass a local path.

Every module is loaded with strict key and shape checks (:func:`lpips_sat.backbones.load_strict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpips_sat.backbones import load_strict, read_checkpoint
from lpips_sat.errors import MissingFileError, OfflineError, WeightsError
from lpips_sat.registry import sha256_file

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<file>.+))?$")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


@dataclass
class CheckpointSource:
    """A resolved checkpoint: a local file or folder, with the sha256 that identifies it in output tags."""

    spec: str
    path: Path
    sha256: str
    hub_id: str | None = None
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _metadata: dict[str, str] | None = field(default=None, repr=False)

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state dict of a single-file checkpoint (read once)."""
        if self.is_folder:
            raise WeightsError(f"{self.path} is a folder; this model needs a single checkpoint file")
        if self._tensors is None:
            self._tensors = read_checkpoint(self.path)
        return self._tensors

    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata (empty for other formats)."""
        if self._metadata is None:
            self._metadata = {}
            if self.path.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    with safe_open(str(self.path), framework="pt") as fh:
                        self._metadata = dict(fh.metadata() or {})
                except Exception as exc:
                    raise WeightsError(f"{self.path}: not a readable safetensors file ({exc})") from exc
        return self._metadata


def resolve(spec: str | Path, *, hub_parts: Sequence[str] | None = None) -> CheckpointSource:
    """Turn ``--checkpoint`` into a local file/folder (downloading hub ids) and hash it.

    Args:
        spec: local path, ``owner/name`` (diffusers repository) or ``owner/name:file``.
        hub_parts: for a repository id, the part folders to fetch (e.g. ``["unet", "vae", "scheduler"]``): their
            configs and ONE weights file each (see :func:`select_hub_files`).
    Raises:
        MissingFileError: a local path that does not exist. OfflineError: a hub id that cannot be fetched.
    """
    text = str(spec)
    path = Path(text).expanduser()
    hub_id = None
    if not path.exists():
        match = _HUB_ID.match(text)
        if match is None or text.startswith((".", "/", "~")) or (match.group("file") is None and text.endswith(WEIGHT_SUFFIXES)):
            raise MissingFileError(f"Checkpoint {text} does not exist (not a local file or folder, nor a hub id 'owner/name[:file]')")
        hub_id = text
        path = _hub_fetch(match.group("repo"), match.group("file"), hub_parts)
    return CheckpointSource(spec=text, path=path, sha256=checkpoint_sha256(path), hub_id=hub_id)


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def select_hub_files(files: Sequence[str], parts: Sequence[str]) -> list[str]:
    """The files of a diffusers repository to download: ``model_index.json``, and per part folder its config/tokenizer
    files (``.json``, ``.txt``) and ONE weights file, the first of :data:`PART_WEIGHT_NAMES` present.

    Hub repositories often carry the same weights twice (``.bin`` and ``.safetensors``, sometimes ``fp16`` variants);
    a pattern such as ``unet/*`` would fetch them all.
    """
    present = set(files)
    chosen = [f for f in ("model_index.json",) if f in present]
    for part in parts:
        chosen += sorted(f for f in present if f.startswith(part + "/") and f.count("/") == 1 and f.endswith((".json", ".txt")))
        weight = next((f"{part}/{n}" for n in PART_WEIGHT_NAMES if f"{part}/{n}" in present), None)
        if weight is not None:
            chosen.append(weight)
    return chosen


def _hub_fetch(repo_id: str, filename: str | None, parts: Sequence[str] | None) -> Path:
    """Download one file or the selected files of a hub repository; any failure -> :class:`OfflineError`."""
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise OfflineError(f"{repo_id} looks like a hub id but huggingface-hub is not installed; pass a local path") from exc
    offline = _offline_requested()
    try:
        if filename:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=offline))
        if offline:  # no listing offline: accept whatever the cache holds of these parts (nothing is downloaded)
            patterns = ["model_index.json"] + [f"{p}/{n}" for p in parts or () for n in ("*.json", "*.txt", *PART_WEIGHT_NAMES)]
        else:
            patterns = select_hub_files(huggingface_hub.list_repo_files(repo_id), parts or ())
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except Exception as exc:
        where = f"{repo_id}:{filename}" if filename else repo_id
        raise OfflineError(f"{where} is not a local file or folder, and fetching it as a Hugging Face hub id failed "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                           "Offline? Download it elsewhere and pass the local file or folder to --checkpoint.") from exc


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a file; for a folder, sha256 of the sorted ``relative-path  sha256`` lines of its weight and config files."""
    if path.is_file():
        return sha256_file(path)
    lines = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.suffix == ".json")):
        lines.append(f"{f.relative_to(path).as_posix()}  {sha256_file(f)}")
    if not lines:
        raise WeightsError(f"Checkpoint folder {path} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON config file with an error naming it."""
    if not path.is_file():
        raise MissingFileError(f"{path}: config file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: invalid JSON ({exc})") from exc


def folder_part(folder: Path, names: Sequence[str]) -> Path:
    """The first existing sub-folder of a diffusers-layout checkpoint among ``names`` (e.g. ``vqvae``/``vae``)."""
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    raise WeightsError(f"Checkpoint folder {folder} has no {' or '.join(repr(n) for n in names)} sub-folder; is it a diffusers model of the right kind?")


#: Weight file names of a diffusers part folder, in order of preference (one format is read, safetensors first).
PART_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")

#: Pre-0.17 diffusers ``AttentionBlock`` parameter names -> today's ``Attention`` names (diffusers 0.17 renamed them;
#: checkpoints written by diffusers 0.8-0.16, e.g. the CompVis LDM x4 UNet/VQ and the SD x4 upscaler VAE, keep the old ones).
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def read_folder_weights(part: Path) -> dict[str, torch.Tensor]:
    """The state dict in a diffusers part folder (``diffusion_pytorch_model.safetensors`` preferred, ``.bin`` via weights_only)."""
    for name in PART_WEIGHT_NAMES:
        if (part / name).is_file():
            return read_checkpoint(part / name)
    raise MissingFileError(f"{part}: no diffusion_pytorch_model.safetensors (or .bin) weights file")


def current_attention_name(key: str, expected: Collection[str]) -> str | None:
    """Today's name of a pre-0.17 attention key (``….query.weight`` -> ``….to_q.weight``) when the module expects that
    name and not the key itself; else None."""
    head, _, param = key.rpartition(".")
    path, _, leaf = head.rpartition(".")
    if leaf not in LEGACY_ATTENTION_NAMES or not path or key in expected:
        return None
    new = f"{path}.{LEGACY_ATTENTION_NAMES[leaf]}.{param}"
    return new if new in expected else None


def rename_legacy_attention(state: Mapping[str, torch.Tensor], expected: Collection[str], source: str) -> dict[str, torch.Tensor]:
    """Rename pre-0.17 attention keys (``….query.weight`` -> ``….to_q.weight`` …) where the module expects the new name.

    A key is renamed only when it is not itself expected, its new name is expected, and the state dict does not
    already hold the new name (both present -> :class:`WeightsError` naming them). Everything else is left as it is,
    so the strict load that follows still reports every missing, unexpected or reshaped key by name.
    """
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        new = current_attention_name(key, expected)
        if new is None:
            out[key] = value
            continue
        if new in state:
            raise WeightsError(f"{source}: both the legacy key {key!r} and its current name {new!r} are present")
        out[new] = value
        renamed += 1
    if renamed:
        log.info("%s: renamed %d pre-0.17 diffusers attention keys (query/key/value/proj_attn)", source, renamed)
    return out


def build_diffusers_part(cls: type, part: Path) -> nn.Module:
    """Instantiate diffusers ``cls`` from ``part/config.json`` and load ``part``'s weights strictly (no network access).

    Checkpoints written before diffusers 0.17 (legacy attention names) are renamed on load by
    :func:`rename_legacy_attention`; every key must still be accounted for, and an error about a renamed key also
    gives the name stored in the file.
    """
    config = read_json(part / "config.json")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        module = cls.from_config(config)
    except Exception as exc:
        raise WeightsError(f"{part}/config.json does not describe a valid {cls.__name__} ({exc})") from exc
    expected = set(module.state_dict())
    stored = read_folder_weights(part)
    state = rename_legacy_attention(stored, expected, str(part))
    try:
        load_strict(module, state, str(part))
    except WeightsError as exc:
        legacy = {new: key for key in stored if (new := current_attention_name(key, expected))}
        named = [f"{new} <- {old}" for new, old in legacy.items() if repr(new) in str(exc)]
        if named:
            raise WeightsError(f"{exc}; renamed from the file's pre-0.17 names: {', '.join(named[:5])}") from exc
        raise
    return module.eval()


def build_scheduler(part: Path | None, default_class: str, defaults: Mapping[str, Any]) -> Any:
    """A diffusers scheduler from ``part/scheduler_config.json`` (class named there), else ``default_class(**defaults)``."""
    import diffusers

    if part is not None and (part / "scheduler_config.json").is_file():
        config = read_json(part / "scheduler_config.json")
        name = config.get("_class_name", default_class)
    else:
        config, name = dict(defaults), default_class
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise WeightsError(f"Unknown scheduler class {name!r} in {part}")
    return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def split_prefixed(state: Mapping[str, torch.Tensor], prefixes: Sequence[str], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split a flat state dict into parts by key prefix (``unet.`` …); a key under no prefix -> :class:`WeightsError`."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    stray = []
    for key, value in state.items():
        for p in prefixes:
            if key.startswith(p + "."):
                parts[p][key[len(p) + 1:]] = value
                break
        else:
            stray.append(key)
    if stray:
        raise WeightsError(f"{source}: unexpected keys {stray[:8]}{' …' if len(stray) > 8 else ''}; expected only keys under {', '.join(p + '.' for p in prefixes)}")
    empty = [p for p in prefixes if not parts[p]]
    if empty:
        raise WeightsError(f"{source}: no keys under {', '.join(p + '.' for p in empty)}; is this a checkpoint of the right model?")
    return parts


def config_from_metadata(source: CheckpointSource, expected_model: str) -> dict[str, Any]:
    """The JSON ``config`` stored in a gapeval safetensors checkpoint's metadata, checking its ``model`` field."""
    meta = source.metadata()
    if "config" not in meta:
        raise WeightsError(f"{source.path}: no 'config' in the safetensors metadata; {expected_model} checkpoints are written by gapeval (e.g. `gapeval train sr3`)")
    model = meta.get("model", "")
    if model != expected_model:
        raise WeightsError(f"{source.path}: checkpoint is for model {model!r}, not {expected_model!r}")
    try:
        return json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{source.path}: metadata 'config' is not valid JSON ({exc})") from exc


def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Write float32 tensors + metadata atomically as safetensors; return the file's sha256."""
    from safetensors.torch import save_file

    from lpips_sat.atomic import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata))
    return sha256_file(path)


__all__ = [
    "CheckpointSource",
    "build_diffusers_part",
    "build_scheduler",
    "checkpoint_sha256",
    "config_from_metadata",
    "load_strict",
    "resolve",
    "rename_legacy_attention",
    "save_safetensors",
    "select_hub_files",
    "split_prefixed",
]
