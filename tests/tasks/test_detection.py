"""Detection task: config -> module/data, a short training run with DOTA-mAP validation, checkpoint -> predictor
and prediction files, bad-input handling (tiny objects, empty images, NaN losses, wrong checkpoints)."""

from __future__ import annotations

import math

import pytest
import torch

from lsknet.config import apply_overrides, list_presets, load_config
from lsknet.data.dota import read_task1_dir
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.errors import CheckpointError, ConfigError
from lsknet.inference.predictor import Predictor
from lsknet.tasks import detection, runner

CLASSES = ["plane", "ship", "storage-tank"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    kw = dict(size=128, classes=CLASSES, objects_per_image=(1, 3), dense_probability=0.0, difficult_fraction=0.0)
    generate_dota_scenes(root / "train", num_images=4, seed=3, **kw)
    generate_dota_scenes(root / "val", num_images=2, seed=4, **kw)
    return root


def _cfg(root, tmp_path, **extra):
    cfg = load_config("detect")
    cfg = apply_overrides(
        cfg,
        [
            f"data.train_root={root / 'train'}",
            f"data.val_root={root / 'val'}",
            f"data.classes={CLASSES}",
            "data.image_size=128",
            "data.num_workers=0",
            "data.augment.rotate_p=0.0",
            f"run_dir={tmp_path / 'run'}",
            "model.drop_path_rate=0.0",
            "model.proj_drop_rate=0.0",
            "model.rpn={train_proposals: {nms_pre: 200, max_per_img: 64}, test_proposals: {max_per_img: 64}}",
            "model.roi={num_samples: 32}",
            "trainer.max_steps=2",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.enable_progress_bar=false",
            "trainer.tensorboard=false",
            "trainer.log_every_n_steps=1",
            "optim.warmup_iters=1",
        ]
        + [f"{k}={v}" for k, v in extra.items()],
    )
    return cfg


def test_every_detection_preset_loads_and_the_dota_one_builds():
    names = [n for n in list_presets() if n.endswith("_orcnn")]
    assert {"dota_lsknet_t_orcnn", "dota_lsknet_s_orcnn", "hrsc_lsknet_t_orcnn", "dior_lsknet_s_orcnn"} <= set(names)
    for name in names + ["demo_detect"]:
        cfg = load_config(name)
        assert cfg["task"] == "detect" and cfg["trainer"]["gradient_clip_val"] == 35
    cfg = load_config("dota_lsknet_t_orcnn")
    # the official recipe
    assert cfg["optim"]["lr"] == 2e-4 and cfg["optim"]["milestones"] == [8, 11] and cfg["optim"]["warmup_iters"] == 500
    module, data = detection.build(cfg)
    assert len(module.classes) == 15 and module.classes[0] == "plane" and module.classes[-1] == "helicopter"
    assert sum(p.numel() for p in module.model.parameters()) == 20_995_288
    with pytest.raises(ConfigError, match="model key"):
        detection.build({**cfg, "model": {"name": "lsknet_t", "wrong": 1}})
    with pytest.raises(ConfigError, match="unknown key model.wrong"):  # overrides are checked up front
        apply_overrides(cfg, ["model={name: lsknet_t, wrong: 1}"])


def test_train_validate_checkpoint_predict(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path)
    result = runner.train(cfg)
    metrics = result.metrics["metrics"]
    assert "val/mAP" in metrics and 0.0 <= metrics["val/mAP"] <= 1.0
    assert (result.run_dir / "val_dota_metrics.json").is_file()
    assert result.best_checkpoint and result.metrics["global_step"] == 2
    # the checkpoint alone rebuilds the detector
    predictor = Predictor.from_checkpoint(result.best_checkpoint, overlap=32)
    assert predictor.classes == tuple(CLASSES) and predictor.tile_size == 128
    module, _, _ = runner.load_module(result.best_checkpoint, build_data=False)
    out = tmp_path / "pred"
    summary = detection.predict(module, [tiny_data / "val" / "images"], out, overlap=32, progress=False)
    assert summary["num_images"] == 2
    assert sorted(p.name for p in (out / "task1").iterdir()) == sorted(f"Task1_{c}.txt" for c in CLASSES)
    assert len(list((out / "vis").glob("*.png"))) == 2 and (out / "detections.json").is_file()
    read_task1_dir(out / "task1", CLASSES)  # the files parse
    # a checkpoint for another class list is refused
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(result.best_checkpoint, classes=["a", "b"])


def test_tiny_objects_are_dropped_and_counted(tiny_data, tmp_path):
    module, _ = detection.build(_cfg(tiny_data, tmp_path))
    batch = {
        "rboxes": [
            torch.tensor([[20.0, 20.0, 30.0, 10.0, 0.1], [50.0, 50.0, 1.5, 1.0, 0.0], [9.0, 9.0, 8.0, 3.0, 0.0]])
        ],
        "labels": [torch.tensor([0, 1, 2])],
    }
    targets = module._targets(batch)
    assert targets[0]["labels"].tolist() == [0, 2] and module._dropped_small == 1


def test_empty_images_can_be_kept_as_negatives(tiny_data, tmp_path):
    empty = tmp_path / "empty"
    generate_dota_scenes(empty, num_images=2, size=128, seed=5, classes=CLASSES, objects_per_image=(0, 0),
                         dense_probability=0.0, truncated_fraction=0.0)  # fmt: skip
    cfg = _cfg(tiny_data, tmp_path, **{"data.train_root": str(empty), "data.filter_empty": "false"})
    cfg["data"]["val_root"] = None
    cfg["trainer"]["monitor"] = None
    result = runner.train(cfg)
    assert result.metrics["global_step"] == 2
    cfg["data"]["filter_empty"] = True
    with pytest.raises(Exception, match="no usable images"):
        runner.train(cfg)


def test_nan_losses_are_skipped_then_training_stops_with_a_checkpoint(tiny_data, tmp_path, monkeypatch):
    cfg = _cfg(tiny_data, tmp_path, **{"detect.nan_patience": 2, "trainer.max_steps": 5})
    module, datamodule = detection.build(cfg)

    def nan_forward(images, targets=None):
        return {"loss_cls": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(module.model, "forward", nan_forward)
    trainer = runner.build_trainer(cfg, tmp_path / "run", training=True)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        with pytest.raises(detection.TrainingDiverged, match="2 consecutive"):
            trainer.fit(module, datamodule=datamodule)
    assert (tmp_path / "run" / "checkpoints" / "diverged.ckpt").is_file()


def test_demo_time_budget_callback_stops_training_and_anneals_the_lr(tiny_data, tmp_path):
    from lsknet.tasks.detection_demo import TimeBudget

    cfg = _cfg(tiny_data, tmp_path, **{"trainer.max_steps": 1000})
    cfg["optim"].update(schedule="constant", min_lr_ratio=0.0, warmup_iters=0)
    cfg["data"]["val_root"] = None
    cfg["trainer"]["monitor"] = None
    budget = TimeBudget(3.0)
    result = runner.train(cfg, callbacks=[budget])
    steps = result.metrics["global_step"]
    assert 1 <= steps < 1000
    # the factor of the last step: past the middle of the cosine over the elapsed time
    assert budget.factor < 0.5 * (1 + math.cos(math.pi * 0.5))
