"""The one checkpoint reader: MMCV/timm metadata (NumPy scalars, argparse.Namespace) in every entry point, file-name
hash prefixes (torch hub / OpenMMLab convention), ``pretrained=True`` without a file, the EMA log message."""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import lsknet
from lsknet.errors import CheckpointError
from lsknet.inference.predictor import Predictor
from lsknet.models.checkpoint import load_checkpoint_file, verify_hash_prefix
from lsknet.models.official import OFFICIAL_WEIGHTS
from lsknet.models.oriented_rcnn import build_oriented_rcnn, load_detector_checkpoint


@pytest.fixture(scope="module")
def mmrotate_file(tmp_path_factory):
    """An MMRotate-layout detector file whose ``meta`` holds what MMCV writes: NumPy scalars and a Namespace."""
    torch.manual_seed(1)
    model = build_oriented_rcnn("lsknet_t", num_classes=3)
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    meta = {
        "epoch": np.int64(12),
        "iter": np.int64(76800),
        "best_score": np.float64(0.8137),
        "args": argparse.Namespace(seed=0, deterministic=False),
        "CLASSES": ["plane", "ship", "harbor"],
    }
    path = tmp_path_factory.mktemp("ckpt") / "lsk_t_fpn_1x_dota_le90.pth"
    torch.save({"meta": meta, "state_dict": state}, path)
    with pytest.raises(Exception, match="Weights only load failed"):  # the plain loader refuses this file
        torch.load(path, map_location="cpu", weights_only=True)
    return path, state


def test_detector_with_numpy_meta_loads_through_create_model(mmrotate_file):
    path, state = mmrotate_file
    model = lsknet.create_model("lsknet_t_orcnn", num_classes=3, checkpoint=path)
    key = "roi_head.bbox_head.fc_cls.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_detector_with_numpy_meta_loads_through_predictor(mmrotate_file):
    path, state = mmrotate_file
    predictor = Predictor.from_checkpoint(path)  # classes from meta.CLASSES
    assert predictor.classes == ("plane", "ship", "harbor")
    key = "neck.fpn_convs.1.conv.weight"
    assert torch.equal(predictor.model.state_dict()[key], state[key])


def test_detector_with_numpy_meta_loads_through_lsknet_predict(mmrotate_file, tmp_path):
    path, _ = mmrotate_file
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "preds"
    proc = subprocess.run(
        [sys.executable, "-m", "lsknet.cli.main", "predict", "--checkpoint", str(path), str(image), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "num_images: 1" in proc.stdout
    assert (out / "detections.json").is_file()


def test_hash_prefix_is_verified(tmp_path, mmrotate_file):
    src, _ = mmrotate_file
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good = tmp_path / f"model-{digest[:8]}.pth"
    shutil.copy(src, good)
    assert verify_hash_prefix(good) == digest[:8]
    assert isinstance(load_checkpoint_file(good), dict)
    wrong = "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in digest[:8])
    if wrong.isdigit():  # keep one letter so the name reads as a hash
        wrong = "a" + wrong[1:]
    bad = tmp_path / f"model-{wrong}.pth"
    shutil.copy(src, bad)
    with pytest.raises(CheckpointError, match=f"SHA-256 mismatch.*{wrong}.*{digest[:8]}"):
        lsknet.create_model("lsknet_t_orcnn", num_classes=3, checkpoint=bad)
    # truncated download of a correctly named file
    truncated = tmp_path / f"lsk-{digest[:8]}.pth"
    truncated.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint_file(truncated)


@pytest.mark.parametrize("name", ["last.ckpt", "epoch=3-step=100.ckpt", "run-20241130.pth", "lsk_t_backbone.pth.tar"])
def test_names_without_hash_are_not_checked(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    assert verify_hash_prefix(path) is None


def test_official_file_names_carry_the_listed_prefix():
    for weights in OFFICIAL_WEIGHTS:
        if weights.sha256_prefix:
            assert f"-{weights.sha256_prefix}." in weights.file and weights.url.endswith(weights.file)
        assert weights.model in lsknet.models.factory.MODEL_NAMES


@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
def test_pretrained_without_file_says_how_to_pass_one(variant):
    with pytest.raises(CheckpointError, match="pretrained_cfg_overlay=dict\\(file=PATH\\)") as info:
        timm.create_model(variant, pretrained=True)
    assert "download.openmmlab.com" in str(info.value)


def test_pretrained_file_goes_through_the_safe_reader(tmp_path):
    model = timm.create_model("lsknet_t")
    sd = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1e-3), "epoch": np.int64(299)}, path)
    loaded = timm.create_model("lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(loaded.state_dict()["block3.4.mlp.fc1.weight"], sd["block3.4.mlp.fc1.weight"])


def test_ema_message_says_the_plain_keys_hold_the_ema_weights(tmp_path, mmrotate_file, caplog):
    src, state = mmrotate_file
    obj = load_checkpoint_file(src)  # the safe reader (weights_only=True with the plain-data globals)
    raw = {k: v + 1 for k, v in obj["state_dict"].items() if v.is_floating_point()}
    obj["state_dict"].update({"ema_" + k.replace(".", "_"): v for k, v in raw.items()})
    path = tmp_path / "ema.pth"
    torch.save(obj, path)
    model = build_oriented_rcnn("lsknet_t", num_classes=3)
    with caplog.at_level(logging.INFO, logger="lsknet.models.detector_base"):
        load_detector_checkpoint(model, path)
    key = "backbone.norm4.weight"
    assert torch.equal(model.state_dict()[key], state[key])  # the plain keys are loaded
    text = caplog.text
    assert "plain keys, which hold the EMA weights" in text and "raw training weights" in text
    assert "the raw weights are loaded" not in text
