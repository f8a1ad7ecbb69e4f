"""Every shipped preset says where its recipe comes from and how it deviates (issue 9: "every preset states its
source config and lists its deviations"). Base presets (``inherit``-free) describe the defaults instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "src" / "lsknet" / "configs"
PRESETS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_presets():
    assert len(PRESETS) > 20


DERIVED = [p for p in PRESETS if "inherit" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", DERIVED, ids=lambda p: p.stem)
def test_preset_states_source_and_deviations(path: Path):
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.lstrip().startswith("#"))
    assert "Source:" in header, f"{path.name}: no '# Source:' line"
    assert "Deviation" in header or "deviation" in header, f"{path.name}: no deviations stated"
