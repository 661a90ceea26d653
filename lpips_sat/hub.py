"""LPIPS-Sat weights as Hugging Face hub model folders: ``model.safetensors`` + ``config.json`` + ``README.md``.

The folder follows the layout of ``huggingface_hub.ModelHubMixin`` (``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``; https://huggingface.co/docs/huggingface_hub/guides/integrations): one safetensors file, a JSON
config, and a model card whose YAML header carries the hub metadata (``license``, ``library_name``, ``tags``,
``datasets``; https://huggingface.co/docs/hub/model-cards). The config repeats what is needed to use the weights
correctly (architecture, bands, normalisation, taps) and the file's sha256, which is checked on every load.

``huggingface_hub`` (in the ``[eval]`` extra) is imported only to download or upload; writing and reading a local
folder need nothing beyond the base install. This module does not import :mod:`lpips_sat.metric`; the metric's
``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` methods call it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from lpips_sat.atomic import make_folder, write_text_atomic
from lpips_sat.backbones import distance_upper_bound
from lpips_sat.errors import LPIPSSatError, MissingFileError, OfflineError, WeightsError
from lpips_sat.registry import save_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
LIBRARY_NAME = "lpips-sat"
FORMAT_VERSION = 1
HUB_HINT = 'pip install "lpips-sat[eval]"'
#: Tags every card carries (the hub's filters); callers may add more.
DEFAULT_TAGS = ("lpips-sat", "perceptual-metric", "image-quality-assessment", "remote-sensing", "sentinel-2", "super-resolution")
#: Hub licence ids recognised in a weights file's free-text ``licence`` metadata (first match wins).
_LICENCE_IDS = ("cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "apache-2.0", "mit", "odc-by", "cdla-permissive-2.0")
_CONFIG_KEYS = ("arch", "width_div", "bands", "mean", "std", "taps")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(text: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_HUB_ID.fullmatch(text)) and not Path(text).exists()


def hub_licence(licence_text: str) -> str:
    """The hub licence id named in a free-text licence (``"weights: CC-BY-4.0; ..."`` -> ``cc-by-4.0``), else ``other``."""
    low = licence_text.lower()
    return next((lid for lid in _LICENCE_IDS if lid in low), "other")


def build_config(metadata: Mapping[str, str], *, sha256: str, heads: str, score_range: Sequence[float]) -> dict[str, Any]:
    """The ``config.json`` content for a weights file with ``metadata`` (safetensors header strings)."""
    return {
        "library_name": LIBRARY_NAME, "format_version": FORMAT_VERSION, "name": metadata.get("name", ""),
        "arch": metadata["arch"], "width_div": int(metadata.get("width_div", "1")), "bands": json.loads(metadata["bands"]),
        "taps": json.loads(metadata["taps"]), "mean": json.loads(metadata["mean"]), "std": json.loads(metadata["std"]),
        "input": "reflectance (Sentinel-2 DN / 10000)", "normalisation": "(reflectance - mean) / std per band, before the backbone",
        "heads": heads, "lower_better": True, "score_range": [float(v) for v in score_range],
        "weights_file": WEIGHTS_NAME, "sha256": sha256,
    }


def _yaml_scalar(value: str) -> str:
    # a JSON string literal is a valid YAML double-quoted scalar (YAML 1.2 escapes are a superset of JSON's)
    return json.dumps(value, ensure_ascii=False)


def model_card(config: Mapping[str, Any], metadata: Mapping[str, str], *, license: str, tags: Sequence[str], datasets: Sequence[str]) -> str:
    """A hub model card: YAML metadata block, then what the weights are, how to load them and where they came from."""
    head = ["---", f"license: {_yaml_scalar(license)}", f"library_name: {_yaml_scalar(LIBRARY_NAME)}", "tags:"]
    head += [f"- {_yaml_scalar(t)}" for t in tags]
    head += ["datasets:"] + [f"- {_yaml_scalar(d)}" for d in datasets] if datasets else ["datasets: []"]
    head += ["---", ""]
    name = config["name"] or "LPIPS-Sat weights"
    lo, hi = config["score_range"]
    body = [
        f"# {name}", "",
        metadata.get("description") or f"LPIPS-Sat perceptual distance, {config['arch']} backbone, bands {', '.join(config['bands'])}.", "",
        "LPIPS-Sat is a learned perceptual distance for multispectral satellite imagery (LPIPS recipe, Zhang et al. 2018, "
        "on a Sentinel-2 backbone). Lower is better; 0 means identical images.", "",
        "## Use", "", "```python", "from lpips_sat import LPIPSSat", "",
        "metric = LPIPSSat.from_pretrained(\"<this repo id or a local folder>\")",
        "d = metric(sr, hr)   # (N, C, H, W) reflectance tensors, bands in the order below", "```", "",
        "## Inputs", "",
        f"* bands, in order: {', '.join(config['bands'])}",
        f"* values: {config['input']}; `LPIPSSat(..., input_range=\"dn\")` divides by 10000 itself",
        f"* normalisation inside the metric: {config['normalisation']}, mean {config['mean']}, std {config['std']}",
        f"* backbone {config['arch']}, taps {', '.join(config['taps'])}; heads: {config['heads']}",
        f"* every distance lies in [{lo:g}, {hi:.6g}] (bound from the head weights; real distances stay far below it)", "",
        "## Provenance", "",
    ]
    for key in ("source", "ssl_method", "calibration", "recipe", "steps_done", "checkpoint", "licence"):
        if metadata.get(key):
            body.append(f"* {key}: `{metadata[key]}`" if key in ("calibration", "recipe") else f"* {key}: {metadata[key]}")
    if metadata.get("data"):
        try:
            files = json.loads(metadata["data"])
            body.append("* training data files (name, sha256):")
            body += [f"  * {f.get('file')} `{f.get('sha256')}`" for f in files]
        except (ValueError, AttributeError):
            body.append(f"* data: {metadata['data']}")
    body += ["", f"`{WEIGHTS_NAME}` sha256 `{config['sha256']}` (checked on load; written by lpips-sat)", ""]
    return "\n".join(head + body)


def save_folder(folder: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], *,
                license: str | None = None, tags: Sequence[str] = (), datasets: Sequence[str] = (), dtype: torch.dtype = torch.float32) -> Path:
    """Write a hub model folder (each file atomically) from weights-file ``tensors`` (``backbone.*``, ``heads.{i}.weight``)
    and safetensors ``metadata`` (needs ``arch``, ``bands``, ``mean``, ``std``, ``taps``).

    ``license`` defaults to the hub id found in ``metadata["licence"]`` (else ``other``).
    """
    missing = [k for k in _CONFIG_KEYS if k not in metadata and k != "width_div"]
    if missing:
        raise WeightsError(f"cannot save a model folder: metadata lacks {missing}")
    folder = make_folder(folder, "model folder")
    sha = save_weights(folder / WEIGHTS_NAME, tensors, metadata, dtype=dtype)
    heads = [tensors[k] for k in sorted(k for k in tensors if k.startswith("heads."))]
    if not heads:
        raise WeightsError("cannot save a model folder without heads.{i}.weight tensors (use all-ones heads for an uncalibrated metric)")
    texture = [tensors[k] for k in sorted(k for k in tensors if k.startswith("texture_heads."))]
    kind = "ones" if all(bool((h == 1).all()) for h in heads) and not texture else "calibrated"
    upper = distance_upper_bound(heads) + (distance_upper_bound(texture) if texture else 0.0)
    config = build_config(metadata, sha256=sha, heads=kind, score_range=(0.0, upper))
    write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    card = model_card(config, metadata, license=license or hub_licence(metadata.get("licence", "")),
                      tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])), datasets=list(datasets))
    write_text_atomic(folder / CARD_NAME, card)
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder, checked for the fields a loader relies on."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise MissingFileError(f"{folder} has no {CONFIG_NAME}; not an lpips-sat model folder (written by save_pretrained)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("library_name") != LIBRARY_NAME:
        raise WeightsError(f"{path}: library_name is not {LIBRARY_NAME!r}; not an lpips-sat model folder")
    if config.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: format_version {config.get('format_version')!r}; this lpips-sat reads version {FORMAT_VERSION} (upgrade lpips-sat)")
    missing = [k for k in (*_CONFIG_KEYS, "sha256") if k not in config]
    if missing:
        raise WeightsError(f"{path}: config lacks {missing}")
    return config


def check_consistent(config: Mapping[str, Any], metadata: Mapping[str, str], where: str) -> None:
    """Refuse a folder whose config disagrees with its weights file on architecture, bands, normalisation or taps."""
    for key in _CONFIG_KEYS:
        raw = metadata.get(key, "1" if key == "width_div" else None)
        if raw is None:
            raise WeightsError(f"{where}: {WEIGHTS_NAME} metadata lacks {key!r}")
        try:
            value = int(raw) if key == "width_div" else raw if key == "arch" else json.loads(raw)
        except ValueError as exc:
            raise WeightsError(f"{where}: {WEIGHTS_NAME} metadata {key!r} is malformed ({raw!r})") from exc
        if value != config[key]:
            raise WeightsError(f"{where}: {CONFIG_NAME} says {key}={config[key]!r} but {WEIGHTS_NAME} says {value!r}; the folder was edited by hand")


def download(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None, force_download: bool = False,
             token: str | bool | None = None, local_files_only: bool = False) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a hub repo into the hub cache; return the snapshot folder."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise OfflineError(f"{repo_id} looks like a hub id but huggingface-hub is not installed: {HUB_HINT}, or pass a local folder") from exc
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                              token=token, local_files_only=local_files_only)))
        except Exception as exc:  # huggingface_hub raises HTTP, connection and cache-miss errors of several types
            raise OfflineError(f"{repo_id} is not a local folder, and fetching its {filename} from the Hugging Face hub failed "
                               f"({type(exc).__name__}: {exc}); offline? download the folder elsewhere and pass its local path") from exc
    if paths[0].parent != paths[1].parent:
        raise WeightsError(f"{repo_id}: {CONFIG_NAME} and {WEIGHTS_NAME} resolved to different revisions")
    return paths[0].parent


def upload(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None, commit_message: str | None = None,
           branch: str | None = None, create_pr: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise LPIPSSatError(f"push_to_hub needs huggingface-hub: {HUB_HINT}") from exc
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=branch, create_pr=create_pr,
                                 commit_message=commit_message or "Upload LPIPS-Sat weights (lpips-sat save_pretrained)")
    except Exception as exc:  # HTTP, authentication and connection errors of several types
        raise OfflineError(f"upload of {folder} to the hub repo {repo_id} failed ({type(exc).__name__}: {exc})") from exc
    return str(getattr(info, "commit_url", info))


def push_folder(write: Any, repo_id: str, **upload_kwargs: Any) -> str:
    """Write a model folder with ``write(tmp_folder)`` into a temporary directory and :func:`upload` it."""
    with tempfile.TemporaryDirectory(prefix="lpips-sat-push-") as tmp:
        write(Path(tmp))
        return upload(tmp, repo_id, **upload_kwargs)
