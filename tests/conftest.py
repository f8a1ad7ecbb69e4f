"""Shared fixtures: the real-sample folder (tests marked ``realdata`` skip when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# CI runs the suite with 2 pytest-xdist workers on 2 cores: one torch thread per worker avoids oversubscription.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the project; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA}")
    return SHARED_DATA
