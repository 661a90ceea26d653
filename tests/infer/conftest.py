"""Fixtures of the gapeval infer tests (helpers live in infer_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from infer_helpers import TINY_LDSR, ldsr_state_shapes, random_state, s2_dn, write_tif


@pytest.fixture
def s2_tif(tmp_path: Path) -> Path:
    """A 32 x 32 px 4-band (B04, B03, B02, B08) Sentinel-2-like DN GeoTIFF in its own folder."""
    folder = tmp_path / "lr"
    folder.mkdir()
    return write_tif(folder / "scene.tif", s2_dn(), descriptions=("B04", "B03", "B02", "B08"))


@pytest.fixture(scope="session")
def ldsr_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LDSR-S2 checkpoint in the Lightning layout (``torch.save({'state_dict': …})``), plus a ``loss.*`` tensor."""
    state = random_state(ldsr_state_shapes(**TINY_LDSR), seed=1)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(4, 3, 3, 3)
    path = tmp_path_factory.mktemp("ckpt") / "ldsr_tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, path)
    return path
