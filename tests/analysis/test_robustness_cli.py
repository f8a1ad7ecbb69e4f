"""``lsknet robustness`` for the three tasks on tiny generated data: the clean value equals ``lsknet eval``'s metric,
every corruption x severity is evaluated, JSON + PNG are written."""

from __future__ import annotations

import json

import pytest
import torch

from lsknet.cli.main import main
from lsknet.config import apply_overrides, load_config
from lsknet.tasks import runner

COMMON = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.tensorboard=false", "trainer.log_every_n_steps=1",
          "trainer.max_epochs=1"]


def _train(preset: str, overrides: list[str], run_dir) -> str:
    cfg = apply_overrides(load_config(preset), COMMON + overrides + [f"run_dir={run_dir}"])
    cfg.pop("demo", None)
    cfg["trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    result = runner.train(cfg)
    return result.best_checkpoint or result.last_checkpoint


def _check(ckpt, tmp_path, key: str, metric: str, overrides=(), corruptions=("jpeg", "cloud")):
    out = tmp_path / "rob"
    args = ["robustness", "--checkpoint", str(ckpt), *overrides, "--corruptions", ",".join(corruptions),
            "--severities", "5", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert report["metric"] == metric and report["key"] == key
    assert [(r["corruption"], r["severity"]) for r in report["results"]] == [(c, 5) for c in corruptions]
    assert (out / "robustness.png").stat().st_size > 0
    reference = runner.evaluate(ckpt, list(overrides), out_dir=tmp_path / "eval")["metrics"][key]
    assert report["clean"] == pytest.approx(reference)
    if report["clean"]:
        rel = [r["value"] / report["clean"] for r in report["results"]]
        assert report["mean_relative"] == pytest.approx(sum(rel) / len(rel))
    return report


def test_robustness_classification(tmp_path):
    from lsknet.data.synthetic_scenes import generate_scene_dataset

    root = generate_scene_dataset(tmp_path / "scenes", per_class=3, size=32, seed=0)
    ckpt = _train("classify", [f"data.root={root}", "data.image_size=32", "data.batch_size=6", "data.num_workers=0",
                               "data.train_ratio=0.5", "trainer.max_steps=2"], tmp_path / "run")
    report = _check(ckpt, tmp_path, "val/acc", "top-1")
    assert all(0.0 <= r["value"] <= 1.0 for r in report["results"])


def test_robustness_detection(tmp_path):
    from lsknet.data.synthetic import generate_dota_scenes

    classes = ["plane", "ship"]
    kw = dict(size=64, classes=classes, objects_per_image=(1, 2), dense_probability=0.0, difficult_fraction=0.0)
    generate_dota_scenes(tmp_path / "train", num_images=2, seed=3, **kw)
    generate_dota_scenes(tmp_path / "val", num_images=1, seed=4, **kw)
    ckpt = _train("detect", [f"data.train_root={tmp_path / 'train'}", f"data.val_root={tmp_path / 'val'}",
                             f"data.classes={classes}", "data.image_size=64", "data.num_workers=0",
                             "data.augment.rotate_p=0.0", "model.rpn={train_proposals: {nms_pre: 100, max_per_img: 32},"
                             " test_proposals: {max_per_img: 32}}", "model.roi={num_samples: 16}",
                             "trainer.max_steps=1", "optim.warmup_iters=1"], tmp_path / "run")
    _check(ckpt, tmp_path, "val/mAP", "DOTA mAP", corruptions=("downsample",))


def test_robustness_segmentation(tmp_path):
    from lsknet.data.synthetic_segmentation import write_scene_set

    write_scene_set(tmp_path / "seg" / "train", num=2, size=64, seed=0, color_masks=True)
    write_scene_set(tmp_path / "seg" / "val", num=1, size=64, seed=1, color_masks=True)
    ckpt = _train("demo_segment", [f"data.root={tmp_path / 'seg'}", "data.crop_size=64", "data.batch_size=2",
                                   "data.num_workers=0", "trainer.max_steps=1", "model.decode_channels=32",
                                   "trainer.check_val_every_n_epoch=1"], tmp_path / "run")
    _check(ckpt, tmp_path, "val/mIoU", "mIoU")


def test_robustness_bad_corruption_is_a_one_line_error(tmp_path, capsys):
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    assert main(["robustness", "--checkpoint", str(ckpt), "--corruptions", "rain", "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
