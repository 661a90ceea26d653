"""Test-wide settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each test with one intra-op thread: the tests use tiny tensors, for which OpenMP synchronisation
    across threads cost ~100x the work on the 2-core CI machine (68 ms vs 0.6 ms for a 32-channel 16 px conv)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
