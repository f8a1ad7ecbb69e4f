"""`lsknet demo` (the README's main command) end to end with a tiny budget: detection is the default task."""

from __future__ import annotations

import json

import torch

from lsknet.cli.main import main


def test_default_demo_is_detection_and_writes_every_output(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    tiny = ["demo.train_images=4", "demo.val_images=2", "demo.image_size=128", "demo.scene_size=256"]
    try:
        code = main(["demo", "--out", str(out), "--budget-minutes", "0.5", *tiny, "trainer.enable_progress_bar=false"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out VOC07 mAP" in printed and str(out) in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= summary["mAP_voc07"] <= 1.0 and summary["train_steps"] > 0
    assert summary["val_images"] == 2 and summary["image_size"] == 128
    eval_metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert abs(eval_metrics["mAP"] - summary["mAP_voc07"]) < 1e-3
    assert any((out / "eval" / "pr_curves").glob("*.png"))
    assert summary["drawn_scene"] and (out / "predictions").is_dir()
    assert (out / "train" / "checkpoints" / "last.ckpt").is_file() or summary["last_checkpoint"]


def test_default_demo_trains_a_fixed_schedule_and_says_how_long(tmp_path, capsys):
    """Without --budget-minutes the number of steps is fixed by the preset (epochs x batches), not by the clock."""
    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    tiny = ["demo.train_images=4", "demo.val_images=2", "demo.image_size=128", "demo.scene_size=256"]
    try:
        code = main(["demo", "--out", str(out), *tiny, "trainer.max_epochs=2"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    captured = capsys.readouterr()
    assert "for a fixed 4 steps; expected about" in captured.out  # 4 images / batch 2 x 2 epochs
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 4
    assert "training" in captured.err and "4/4" in captured.err  # the step bar (tqdm on stderr)
