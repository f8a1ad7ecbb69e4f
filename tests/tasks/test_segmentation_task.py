"""Segmentation task: build from config, train a few steps through the shared runner, metrics files, checkpoint
round trip, predict outputs and bad input; real ISPRS/LoveDA crops (realdata)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.config import apply_overrides, load_config
from lsknet.data.synthetic_segmentation import write_scene_set
from lsknet.errors import ConfigError, DatasetFormatError, DataSkipWarning
from lsknet.evaluation.segmentation import confusion_matrix, metrics_from_confusion
from lsknet.tasks import get_task
from lsknet.tasks.segmentation import build, predict

TINY = [
    "data.crop_size=64", "data.batch_size=2", "data.num_workers=0", "trainer.max_steps=2", "trainer.max_epochs=1",
    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.tensorboard=false", "trainer.log_every_n_steps=1",
    "model.decode_channels=32", "predict.window=64", "predict.overlap=16", "trainer.check_val_every_n_epoch=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    write_scene_set(root / "train", num=4, size=64, seed=0, color_masks=True)
    write_scene_set(root / "val", num=2, size=64, seed=1, color_masks=True)
    return root


def _cfg(root, run_dir, extra=()):
    cfg = apply_overrides(load_config("demo_segment"), TINY + list(extra))
    cfg.pop("demo")
    cfg["data"]["root"] = str(root)
    cfg["run_dir"] = str(run_dir)
    return cfg


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    from lsknet.tasks import runner

    result = runner.train(_cfg(scenes, tmp_path_factory.mktemp("run") / "run"))
    return result


def test_get_task_and_presets_resolve():
    assert get_task("segment").build is build
    for name in (
        "potsdam_lsknet_t_unetformer",
        "vaihingen_lsknet_s_unetformer",
        "loveda_lsknet_t_unetformer",
        "uavid_lsknet_s_unetformer",
        "potsdam_lsknet_s_upernet",
        "potsdam_lsknet_t_unetformer_cpu",
    ):
        cfg = load_config(name)
        assert cfg["task"] == "segment" and cfg["trainer"]["monitor"] in ("val/mIoU", "val/mF1")


# GeoSeg config/<dataset>/unetformer.py values, read from GeoSeg (max_epoch, batch, lr, scheduler, crop, scales,
# online flips, mosaic, training tiles)
GEOSEG = {
    "potsdam": dict(epochs=45, batch=8, sched=("cosine_restarts", 15, 2), crop=768, scales=[0.75, 1.0, 1.25, 1.5],
                    flips=(False, False, False, None), stride=1024, flip_copies=True),
    "vaihingen": dict(epochs=105, batch=8, sched=("cosine_restarts", 15, 2), crop=512,
                      scales=[0.5, 0.75, 1.0, 1.25, 1.5], flips=(False, False, 0.5, None), stride=512,
                      flip_copies=True),
    "loveda": dict(epochs=30, batch=16, sched=("cosine", 30, 1e-6), crop=512, scales=[0.75, 1.0, 1.25, 1.5],
                   flips=(0.5, False, False, None), stride=None, flip_copies=False),
    "uavid": dict(epochs=40, batch=8, sched=("cosine", 40, 0.0), crop=None, scales=None,
                  flips=(0.5, 0.5, False, {"brightness": 0.25, "contrast": 0.25, "p": 0.25}), stride=1024,
                  flip_copies=False),
}  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(GEOSEG))
@pytest.mark.parametrize("variant", ["t", "s"])
def test_presets_follow_geoseg_unetformer_configs(dataset, variant):
    cfg = load_config(f"{dataset}_lsknet_{variant}_unetformer")
    want = GEOSEG[dataset]
    o, d = cfg["optim"], cfg["data"]
    assert cfg["model"]["variant"] == f"lsknet_{variant}"
    assert (o["name"], o["lr"], o["weight_decay"], o["backbone_lr_mult"]) == ("adamw", 6e-4, 0.01, 0.1)
    assert o["no_decay_norm_bias"] == "bias" and o["lookahead"] == {"k": 5, "alpha": 0.5} and o["interval"] == "epoch"
    sched = want["sched"]
    if sched[0] == "cosine":
        assert (o["schedule"], o["t_max"], o["min_lr"]) == sched
    else:
        assert (o["schedule"], o["t0"], o["t_mult"]) == sched
    assert (cfg["trainer"]["max_epochs"], d["batch_size"]) == (want["epochs"], want["batch"])
    assert d["augment"] == "geoseg" and d["mosaic_ratio"] == 0.25 and d["mosaic_size"] == 1024
    assert (d["crop_size"], d["scales"]) == (want["crop"], want["scales"])
    assert (d["hflip"], d["vflip"], d["rot90"], d["brightness_contrast"]) == want["flips"]
    assert d["train_tile_stride"] == want["stride"] and d["train_flip_copies"] == want["flip_copies"]
    assert cfg["loss"]["averaging"] == "geoseg" and cfg["loss"]["aux_weight"] == 0.4
    if dataset in ("loveda", "uavid"):  # GeoSeg trains on train + val
        assert isinstance(d["train"], list) and len(d["train"]) == 2 and d["train"][1] == d["val"]


def _geoseg_cfg(scenes, run_dir):
    pots = load_config("potsdam_lsknet_t_unetformer")
    cfg = _cfg(scenes, run_dir, ["trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                                 "trainer.limit_val_batches=1"])  # fmt: skip
    cfg["optim"] = pots["optim"]
    cfg["data"].update(augment="geoseg", scales=[0.75, 1.0], crop_size=48, mosaic_ratio=1.0, hflip=False, vflip=False,
                       rot90=0.5, train=[cfg["data"]["train"], cfg["data"]["val"]])  # fmt: skip
    return cfg


def _lrs(opt):
    return sorted({round(g["lr"], 12) for g in opt.param_groups})


def test_geoseg_recipe_trains_with_lookahead_and_epoch_schedule(scenes, tmp_path):
    from lsknet.tasks import runner
    from lsknet.tasks.lookahead import Lookahead

    result = runner.train(_geoseg_cfg(scenes, tmp_path / "run"))
    opt = result.module.trainer.optimizers[0]
    assert isinstance(opt, Lookahead)
    assert len(result.module.trainer.datamodule.datasets["train"]) == 6  # 4 train + 2 val scenes
    # after 2 epochs of CosineAnnealingWarmRestarts(T_0 15): lr = base (1 + cos(pi 2 / 15)) / 2, backbone 0.1x
    factor = (1 + math.cos(math.pi * 2 / 15)) / 2
    assert _lrs(opt) == pytest.approx([6e-5 * factor, 6e-4 * factor], rel=1e-9)
    assert opt.state and all(g["lookahead_counter"] == 4 for g in opt.param_groups)  # synced at step 1, k = 5


@pytest.mark.slow
def test_geoseg_recipe_resumes_lookahead_and_schedule(scenes, tmp_path):
    from lsknet.tasks import runner
    from lsknet.tasks.lookahead import Lookahead

    cfg = _geoseg_cfg(scenes, tmp_path / "run")
    first = runner.train(cfg)
    # a third epoch from last.ckpt: Lookahead (inner AdamW state, slow weights, counters) and the scheduler continue
    cfg["trainer"]["max_epochs"] = 3
    cfg["run_dir"] = str(tmp_path / "resumed")
    resumed = runner.train(cfg, resume=first.last_checkpoint).module.trainer.optimizers[0]
    assert isinstance(resumed, Lookahead) and resumed.optimizer.state and resumed.state
    assert all(g["lookahead_counter"] == 1 for g in resumed.param_groups)  # 6 steps: synced again at step 6
    factor3 = (1 + math.cos(math.pi * 3 / 15)) / 2
    assert _lrs(resumed) == pytest.approx([6e-5 * factor3, 6e-4 * factor3], rel=1e-9)


def test_trained_run_writes_metrics_matching_an_independent_confusion(trained, scenes):
    run_dir = trained.run_dir
    assert trained.best_checkpoint and "val/mIoU" in trained.metrics["metrics"]
    saved = json.loads((run_dir / "val_metrics.json").read_text())
    assert (run_dir / "val_confusion.csv").exists() and (run_dir / "val_confusion.png").exists()
    # recompute with the best checkpoint, image by image, outside Lightning
    module = trained.module.cpu().eval()
    ds = build(module.config)[1]._dataset("val")
    cm = np.zeros((6, 6), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            cm += confusion_matrix(module(s["image"][None]).argmax(1)[0], s["mask"], 6)
    want = metrics_from_confusion(cm, module.class_names)
    assert saved["pixels"] == cm.sum() == 2 * 64 * 64
    assert saved["mIoU"] == pytest.approx(want["mIoU"]) and saved["OA"] == pytest.approx(want["OA"])
    assert trained.metrics["metrics"]["val/mIoU"] == pytest.approx(want["mIoU"])


def test_checkpoint_rebuilds_and_predicts(trained, scenes, tmp_path):
    from lsknet.tasks import runner

    module, _, cfg = runner.load_module(trained.best_checkpoint, build_data=False)
    assert cfg["task"] == "segment"
    src = tmp_path / "in"
    src.mkdir()
    img = np.asarray(Image.open(scenes / "val" / "img_dir" / "scene_0000.png"))
    big = np.tile(img, (2, 3, 1))  # 128 x 192: several windows
    Image.fromarray(big).save(src / "big.png")
    (src / "broken.png").write_bytes(b"not an image")
    with pytest.warns(DataSkipWarning, match="broken.png"):
        out = predict(module, [src], tmp_path / "out", progress=False)
    assert out["images"] == 1 and out["skipped"] == [str(src / "broken.png")]
    labels = np.asarray(Image.open(tmp_path / "out" / "index" / "big.png"))
    assert labels.shape == (128, 192) and labels.max() < 6
    assert (tmp_path / "out" / "color" / "big.png").exists() and (tmp_path / "out" / "overlay" / "big.png").exists()
    with pytest.raises(DatasetFormatError, match="broken.png"):
        predict(module, [src], tmp_path / "out2", progress=False, strict=True)
    with pytest.raises(DatasetFormatError, match="not found"):
        predict(module, [tmp_path / "missing"], tmp_path / "out3")


def test_config_errors(scenes, tmp_path):
    with pytest.raises(ConfigError, match="evaluation.exclude"):
        build(_cfg(scenes, tmp_path, ["evaluation.exclude=[sky]"]))
    cfg = _cfg(scenes, tmp_path)
    cfg["data"]["val"] = {"images": "val/img_dir"}
    with pytest.raises(ConfigError, match="data.val"):
        build(cfg)[1].setup("validate")


def test_images_without_masks_are_counted(scenes, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(scenes / "val", root / "val")
    (root / "val" / "ann_dir" / "scene_0001.png").unlink()
    cfg = _cfg(root, tmp_path, ["data.val={images: val/img_dir, masks: val/ann_dir}", "data.train=null"])
    with pytest.warns(DataSkipWarning, match="1 image.s. without a mask"):
        assert len(build(cfg)[1]._dataset("val")) == 1
    cfg["data"]["strict"] = True
    with pytest.raises(DatasetFormatError, match="without a mask"):
        build(cfg)[1]._dataset("val")


@pytest.mark.realdata
def test_real_crops_train_and_evaluate(shared_data, tmp_path):
    import lightning as L

    root = shared_data / "mmseg_pseudo"
    for fmt, folder in (("isprs", "pseudo_potsdam_dataset"), ("isprs", "pseudo_vaihingen_dataset"),
                        ("loveda", "pseudo_loveda_dataset")):  # fmt: skip
        split = {"images": "img_dir", "masks": "ann_dir"}
        cfg = _cfg(root / folder, tmp_path, ["data.format=" + fmt, "data.crop_size=128", "data.val_tile_size=256"])
        cfg["data"]["train"] = cfg["data"]["val"] = split
        module, dm = build(cfg)
        trainer = L.Trainer(
            max_steps=2, limit_val_batches=2, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, default_root_dir=tmp_path,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, datamodule=dm)
            res = trainer.validate(module, datamodule=dm, verbose=False)[0]
        assert 0.0 <= res["val/mIoU"] <= 1.0 and 0.0 <= res["val/OA"] <= 1.0
        m = module.last_metrics
        assert m["pixels"] > 0 and len(m["IoU"]) == (6 if fmt == "isprs" else 7)


def test_initial_weights_load_at_fit_only(scenes, tmp_path):
    import timm

    import lsknet.models.backbone  # noqa: F401
    from lsknet.errors import CheckpointError

    classifier = timm.create_model("lsknet_t")
    torch.save(classifier.state_dict(), tmp_path / "bb.pth")
    cfg = _cfg(scenes, tmp_path, [f"model.backbone_checkpoint={tmp_path / 'bb.pth'}"])
    module, _ = build(cfg)
    key = "model.patch_embed1.proj.weight"
    assert not torch.equal(module.model.backbone.state_dict()[key], classifier.state_dict()["patch_embed1.proj.weight"])
    module.setup("fit")
    torch.testing.assert_close(
        module.model.backbone.state_dict()[key], classifier.state_dict()["patch_embed1.proj.weight"]
    )
    # rebuilding from a stored config on a machine without the file works; fitting from it is a clear error
    (tmp_path / "bb.pth").unlink()
    module, _ = build(cfg)
    module.setup("validate")
    with pytest.raises(CheckpointError, match="not found"):
        module.setup("fit")


def test_split_include_list(scenes, tmp_path):
    cfg = _cfg(scenes, tmp_path, ["data.val={images: val/img_dir, masks: val/ann_dir, include: [scene_0001]}"])
    ds = build(cfg)[1]._dataset("val")
    assert [p[0].name for p in ds.pairs] == ["scene_0001.png"]
    cfg["data"]["val"]["include"] = ["scene_0001", "scene_0042"]
    with pytest.raises(DatasetFormatError, match="scene_0042"):
        build(cfg)[1]._dataset("val")


def test_old_unetformer_layout_checkpoint_is_a_clear_error(trained, tmp_path):
    from lsknet.errors import CheckpointError
    from lsknet.tasks import runner

    ckpt = torch.load(trained.best_checkpoint, map_location="cpu", weights_only=True)
    old, new = "model.decode_head.pre_conv.", "model.decode_head.pre4."
    ckpt["state_dict"] = {(k.replace(old, new) if k.startswith(old) else k): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="older lsknet"):
        runner.load_module(tmp_path / "old.ckpt")
