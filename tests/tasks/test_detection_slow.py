"""Long detection checks: overfitting a few generated images (mAP close to 1), the `lsknet demo` acceptance run
(held-out VOC07 mAP >= 0.7 within the default budget), and a smoke run on real DOTA imagery."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from lsknet.config import apply_overrides, load_config
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.evaluation.dota import evaluate_dota
from lsknet.inference.predictor import Predictor, write_outputs
from lsknet.tasks import detection, runner

CLASSES = ["large-vehicle", "plane", "storage-tank", "tennis-court"]


@pytest.mark.slow
def test_overfits_a_few_generated_images(tmp_path):
    generate_dota_scenes(
        tmp_path / "train", num_images=4, size=192, seed=11, classes=CLASSES, objects_per_image=(3, 5),
        dense_probability=0.0, difficult_fraction=0.0, truncated_fraction=0.0,
    )  # fmt: skip
    cfg = apply_overrides(
        load_config("demo_detect"),
        [
            f"data.train_root={tmp_path / 'train'}",
            f"data.classes={CLASSES}",
            "data.image_size=192",
            "data.augment.flip=false",
            f"run_dir={tmp_path / 'run'}",
            "trainer.max_steps=300",
            "trainer.enable_progress_bar=false",
            "optim.schedule=cosine",
        ],
    )
    cfg.pop("demo")
    result = runner.train(cfg)
    module = result.module.eval()
    predictor = Predictor(module.model, CLASSES, tile_size=192, overlap=0)
    results = list(predictor.predict([tmp_path / "train" / "images"]))
    per_image = {r.image_id: {"rboxes": r.rboxes, "scores": r.scores, "labels": r.labels} for r in results}
    report = evaluate_dota(detection.results_to_task1(per_image, CLASSES), tmp_path / "train" / "labelTxt", CLASSES)
    assert report.mAP >= 0.9, report.per_class


@pytest.mark.slow
def test_demo_reaches_the_map_target_within_the_budget(tmp_path):
    start = time.perf_counter()
    from lsknet.tasks.detection_demo import run_demo

    summary = run_demo(tmp_path / "demo")
    minutes = (time.perf_counter() - start) / 60
    assert summary["mAP_voc07"] >= 0.7, summary
    assert minutes <= 10.5, minutes
    stored = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert stored["mAP_voc07"] == summary["mAP_voc07"]
    assert (tmp_path / "demo" / "eval" / "pr_curves").is_dir()
    assert os.path.isfile(summary["drawn_scene"]) and summary["scene_tiles"] > 1


@pytest.mark.realdata
def test_real_dota_patches_train_predict_draw(shared_data, tmp_path):
    src = shared_data / "ultralytics_dota8"
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "images").symlink_to(src / "images" / split)
        (tmp_path / split / "labelTxt").symlink_to(src / "labelTxt_dota_derived" / split)
    cfg = apply_overrides(
        load_config("dota_lsknet_t_orcnn"),
        [
            f"data.train_root={tmp_path / 'train'}",
            "data.image_size=256",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.augment.rotate_p=0.5",
            f"run_dir={tmp_path / 'run'}",
            "model.rpn={train_proposals: {nms_pre: 500, max_per_img: 200}, test_proposals: {max_per_img: 100}}",
            "model.roi={num_samples: 64}",
            "trainer.max_steps=2",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.monitor=null",
            "trainer.enable_progress_bar=false",
            "trainer.tensorboard=false",
        ],
    )
    result = runner.train(cfg)
    assert result.metrics["global_step"] == 2
    module = result.module.eval()
    predictor = Predictor(module.model, module.classes, tile_size=512, overlap=0, batch_size=4)
    images = sorted((tmp_path / "val" / "images").iterdir())[:2]
    with torch.no_grad():
        results = list(predictor.predict(images))
    assert [r.image_size for r in results] == [(1024, 1024)] * 2 and results[0].extra["num_tiles"] == 4
    written = write_outputs(results, tmp_path / "pred", draw_score_thr=0.0)
    assert len(written["png_files"]) == 2 and len(written["task1_files"]) == 15
