"""Resumable training state in safetensors: module + optimizer tensors, and a JSON sidecar for the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lpips_sat.atomic import atomic_path
from lpips_sat.errors import WeightsError


def save_state(path: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Write ``path`` (.safetensors) and ``path.json`` atomically: every module's state dict plus the optimizer state."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{pid}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in opt["param_groups"]]
    tmp, meta_tmp = atomic_path(path), atomic_path(str(path) + ".json")  # named so the next run removes them after a kill
    save_file(tensors, str(tmp))
    meta_tmp.write_text(json.dumps({"info": info, "param_groups": groups}, indent=1))
    os.replace(tmp, path)
    os.replace(meta_tmp, str(path) + ".json")


def load_state(path: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """Restore what :func:`save_state` wrote (strictly) and return its ``info`` dict.

    Raises:
        WeightsError: the state or its ``.json`` sidecar is unreadable (corrupt, truncated) or does not fit the modules.
    """
    path = Path(path)
    try:
        tensors = load_file(str(path))
        meta = json.loads(Path(str(path) + ".json").read_text(encoding="utf-8"))
        for prefix, module in modules.items():
            own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(own, strict=True)
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return meta["info"]
    except Exception as exc:  # noqa: BLE001 - safetensors, json, OSError and state-dict errors alike: the file cannot resume
        raise WeightsError(f"{path}: cannot resume from this training state ({type(exc).__name__}: {exc}); "
                           "delete it (and its .json) to start over, or use another --out") from exc
