"""``lsknet compare`` at a tiny size: rows, params/GMACs against published numbers, CSV/JSON/PNG, unrunnable rows."""

from __future__ import annotations

import csv
import json

import pytest

from lsknet.cli.main import main


def test_compare_cli_writes_rows_json_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["compare", "--models", "lsknet_t", "resnet18", "no_such_model", "--sizes", "64", "--repeats", "2",
            "--threads", "1", "--json", str(out / "c.json"), "--csv", str(out / "c.csv"), "--plot", str(out / "c.png")]
    assert main(args) == 0
    result = json.loads((out / "c.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"lsknet_t", "resnet18", "no_such_model"}
    assert rows["lsknet_t"]["params"] == 3_990_190  # official LSKNet-T backbone without head
    assert rows["resnet18"]["params"] == 11_176_512  # torchvision ResNet-18 (11.69M) minus its 513,000-param fc
    # torchvision publishes 1.81 GFLOPS (= GMACs) for ResNet-18 at 224; every map here is (64/224)^2 of that
    assert rows["resnet18"]["gmacs"] == pytest.approx(1.81 * (64 / 224) ** 2, rel=0.01)
    for name in ("lsknet_t", "resnet18"):
        r = rows[name]
        assert r["error"] is None and r["threads"] == 1 and r["size"] == 64 and r["features_only"]
        assert r["latency_ms"] > 0 and r["throughput"] == pytest.approx(1000 / r["latency_ms"])
        assert r["peak_mb"] is None or r["peak_mb"] >= 0
    assert rows["lsknet_t"]["optimized_ms"] > 0 and rows["resnet18"]["optimized_ms"] is None
    assert rows["no_such_model"]["error"] and rows["no_such_model"]["latency_ms"] is None
    assert result["machine"]["cpu_count"] >= 1 and result["settings"]["interleaved"] is True
    with open(out / "c.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (out / "c.png").stat().st_size > 0
    assert "cannot run" in capsys.readouterr().out
