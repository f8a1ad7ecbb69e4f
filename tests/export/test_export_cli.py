"""``lsknet export`` + ``lsknet predict`` / ``lsknet eval`` with the exported file: the ONNX detector writes the same
Task1 files and the same DOTA mAP as the checkpoint it came from; bad files and options give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsknet.cli.main import main
from lsknet.config import apply_overrides, load_config
from lsknet.data.dota import read_task1_dir
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.tasks import detection

pytest.importorskip("onnxruntime")

CLASSES = ["plane", "ship", "storage-tank"]


def _one_line_error(capsys, code: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert needle in err.strip().splitlines()[-1], err


@pytest.fixture(scope="module")
def det_checkpoint(tmp_path_factory):
    """A detection checkpoint as training writes it (config + state dict), tiny and with spread-out scores."""
    root = tmp_path_factory.mktemp("det")
    kw = dict(classes=CLASSES, objects_per_image=(2, 4), dense_probability=0.0, difficult_fraction=0.0)
    generate_dota_scenes(root / "val", num_images=2, size=128, seed=4, **kw)
    generate_dota_scenes(root / "big", num_images=1, size=(200, 300), seed=5, **kw)  # tiled (tile 128)
    cfg = apply_overrides(
        load_config("detect"),
        [
            f"data.train_root={root / 'val'}",
            f"data.val_root={root / 'val'}",
            f"data.classes={CLASSES}",
            "data.image_size=128",
            "data.num_workers=0",
            "model.fpn_channels=32",
            "model.rpn={test_proposals: {nms_pre: 300, max_per_img: 64}}",
            "model.roi={fc_channels: 64}",
        ],
    )
    torch.manual_seed(0)
    module, _ = detection.build(cfg)
    with torch.no_grad():
        module.model.rpn_head.rpn_cls.weight.normal_(0, 0.3)
        module.model.roi_head.bbox_head.fc_cls.weight.normal_(0, 0.3)
    path = root / "det.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": cfg}}, path)
    return path, root


@pytest.mark.slow
def test_predict_and_eval_with_onnx_equal_the_checkpoint(det_checkpoint, tmp_path, capsys):
    ckpt, root = det_checkpoint
    onnx_path = tmp_path / "det.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert "detector" in capsys.readouterr().out
    sources = [str(root / "val" / "images"), str(root / "big" / "images")]
    for name, path in (("ckpt", ckpt), ("onnx", onnx_path)):
        assert main(["predict", "--checkpoint", str(path), *sources, "--out", str(tmp_path / name)]) == 0
    ref = read_task1_dir(tmp_path / "ckpt" / "task1", CLASSES)
    got = read_task1_dir(tmp_path / "onnx" / "task1", CLASSES)
    total = 0
    for cls in CLASSES:
        assert list(got[cls].image_ids) == list(ref[cls].image_ids), cls
        np.testing.assert_allclose(got[cls].scores, ref[cls].scores, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[cls].polys, ref[cls].polys, atol=2e-2, rtol=0)
        total += len(ref[cls])
    assert total > 10
    # eval: the same mAP through the task's validation loop
    maps = []
    for name, path in (("ckpt", ckpt), ("onnx", onnx_path)):
        assert main(["eval", "--checkpoint", str(path), "--out", str(tmp_path / f"eval_{name}")]) == 0
        line = [ln for ln in capsys.readouterr().out.splitlines() if "val/mAP=" in ln][0]
        maps.append(float(line.split("val/mAP=")[1].split(",")[0]))
    assert maps[0] == pytest.approx(maps[1], abs=1e-4)


def test_export_backbone_and_bad_input(tmp_path, capsys):
    out = tmp_path / "bb.onnx"
    assert main(["export", "--model", "lsknet_t", "--out", str(out), "--size", "64", "--static"]) == 0
    assert "backbone, static 1x3x64x64" in capsys.readouterr().out
    _one_line_error(capsys, main(["predict", "--checkpoint", str(out), str(tmp_path)]), "holds no run config")
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), str(plain), dynamo=False)
    _one_line_error(capsys, main(["predict", "--checkpoint", str(plain), str(tmp_path)]), "not an lsknet export")
    _one_line_error(capsys, main(["export", "--model", "resnet50", "--out", str(out)]), "--model must be one of")
    _one_line_error(capsys, main(["export", "--out", str(out)]), "either --checkpoint")
    _one_line_error(capsys, main(["export", "--model", "lsknet_t", "--format", "tflite", "--out", str(out)]), "tflite")
