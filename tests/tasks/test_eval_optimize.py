"""``lsknet eval`` / ``runner.evaluate`` run the detector through ``optimize_for_inference`` by default (same metrics as
the eager model); ``--no-optimize`` and the config key ``detect.optimize: false`` switch it off."""

from __future__ import annotations

import json

import pytest

import lsknet.inference.optimize as optimize_mod
from lsknet.cli.main import main
from lsknet.tasks import runner
from tests.tasks.test_detection import _cfg, tiny_data  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):  # noqa: F811
    cfg = _cfg(tiny_data, tmp_path_factory.mktemp("evalopt"))
    return runner.train(cfg).best_checkpoint


@pytest.fixture
def calls(monkeypatch):
    """The detectors handed to optimize_for_inference (the real function still runs)."""
    seen = []
    real = optimize_mod.optimize_for_inference

    def spy(model, **kw):
        seen.append(type(model).__name__)
        return real(model, **kw)

    monkeypatch.setattr(optimize_mod, "optimize_for_inference", spy)
    return seen


def test_eval_optimizes_by_default_and_no_optimize_or_the_config_key_switch_it_off(checkpoint, calls, tmp_path):
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "fast")]) == 0
    assert calls == ["OrientedRCNN"]
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a"), "--no-optimize"]) == 0
    eager = runner.evaluate(checkpoint, ["detect.optimize=false"], out_dir=tmp_path / "b")
    assert calls == ["OrientedRCNN"]  # neither the flag nor the config key optimized
    fast = json.loads((tmp_path / "fast" / "metrics.json").read_text())["metrics"]
    assert set(fast) == set(eager["metrics"]) and "val/mAP" in fast
    for key, value in eager["metrics"].items():  # same detections -> same metrics
        assert fast[key] == pytest.approx(value, abs=1e-6), key
