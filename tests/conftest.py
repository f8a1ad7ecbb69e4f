"""Shared fixtures: the real-sample folder (tests marked ``realdata`` skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests share 2 CPU cores in CI; more threads than cores only adds contention.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the project; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA}")
    return SHARED_DATA
