"""R3Det overfits a few generated DOTA-format images (mAP >= 0.9 on them, DOTA Task1 evaluation). For speed the
backbone is timm's ``resnet10t`` (random init) with 32 FPN channels and one stacked conv per head tower; the rest
(anchors, two refinement stages with FRM, assigners, focal loss, test path) is the official R3Det."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.data.dota import read_labeltxt
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.data.task1 import results_to_task1
from lsknet.evaluation.dota import evaluate_dota
from lsknet.models.r3det import build_r3det
from lsknet.ops import poly_to_rbox

CLASSES = ["large-vehicle", "plane", "storage-tank", "tennis-court"]
STEPS = 150


@pytest.mark.slow
def test_r3det_overfits_a_few_generated_images(tmp_path):
    generate_dota_scenes(
        tmp_path, num_images=4, size=128, seed=11, classes=CLASSES, objects_per_image=(3, 5),
        dense_probability=0.0, difficult_fraction=0.0, truncated_fraction=0.0,
    )  # fmt: skip
    images, targets, ids = [], [], []
    for path in sorted((tmp_path / "images").glob("*.png")):
        ann = read_labeltxt(tmp_path / "labelTxt" / f"{path.stem}.txt")
        images.append(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float())
        targets.append({"rboxes": poly_to_rbox(torch.from_numpy(ann.polys).float()),
                        "labels": torch.from_numpy(ann.labels(CLASSES))})  # fmt: skip
        ids.append(path.stem)
    torch.manual_seed(0)
    model = build_r3det("resnet10t", num_classes=len(CLASSES), fpn_channels=32, head={"stacked_convs": 1},
                        drop_path_rate=0.0)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=STEPS, pct_start=0.1)
    model.train()
    for _ in range(STEPS):
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        optimizer.step()
        schedule.step()
    model.eval()
    results = dict(zip(ids, model(images)))
    report = evaluate_dota(results_to_task1(results, CLASSES), tmp_path / "labelTxt", CLASSES)
    print(f"R3Det overfit: mAP {report.mAP:.4f} after {STEPS} steps")  # shown with pytest -s
    assert report.mAP >= 0.9, report.per_class
