"""RoI Transformer overfits a few generated DOTA-format images: DOTA mAP (VOC07, IoU 0.5) >= 0.9 on them.

LSKNet-T from scratch (no pretrained weights) with narrower heads for speed on 2 CPU cores (FPN / RPN / RoI
channels 64 instead of 256, shared FCs 256 wide instead of 1024: the FPN, RPN and the two 12544 x 1024 FCs cost
more than the backbone at this size); everything else is the official RoI Transformer. Training settings are the
demo's (``demo_detect.yaml``: AdamW 1e-3, warmup, cosine, fewer proposals / samples, border anchors trained).
Progress (step, losses) goes to the log (``-o log_cli=true --log-cli-level=INFO`` shows it).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from lsknet.data.detection import DOTADetectionDataset, hflip
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.data.task1 import results_to_task1
from lsknet.evaluation.dota import evaluate_dota
from lsknet.models.roi_transformer import build_roi_transformer

CLASSES = ["large-vehicle", "plane", "storage-tank", "tennis-court"]
STEPS = 240
_log = logging.getLogger(__name__)


@pytest.mark.slow
def test_overfits_a_few_generated_images(tmp_path):
    generate_dota_scenes(
        tmp_path / "train", num_images=4, size=192, seed=11, classes=CLASSES, objects_per_image=(3, 5),
        dense_probability=0.0, difficult_fraction=0.0, truncated_fraction=0.0,
    )  # fmt: skip
    data = DOTADetectionDataset(tmp_path / "train", classes=CLASSES)
    samples = [data[i] for i in range(len(data))]
    torch.manual_seed(0)
    head = {
        "rpn_allowed_border": -1,
        "rpn_train_proposals": {"nms_pre": 1000, "max_per_img": 300},
        "rpn_test_proposals": {"nms_pre": 1000, "max_per_img": 300},
        "train_cfg": {"num_samples": 128},
        "fc_channels": 256,
    }
    model = build_roi_transformer("lsknet_t", num_classes=len(CLASSES), drop_path_rate=0.0, proj_drop_rate=0.0,
                                  fpn_channels=64, head=head)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    warmup = 30
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: 0.1 + 0.9 * s / warmup if s < warmup else 0.02 + 0.49 * (1 + math.cos(math.pi * s / STEPS)),
    )
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(STEPS):
        idx = torch.randperm(len(samples), generator=gen)[:2].tolist()
        batch = [hflip(samples[i]) if torch.rand(1, generator=gen) < 0.5 else samples[i] for i in idx]
        targets = [{"rboxes": s["rboxes"], "labels": s["labels"]} for s in batch]
        losses = model([s["image"] * 255 for s in batch], targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        assert torch.isfinite(loss)
        if step % 20 == 0:
            _log.info("step %d: %s", step, {k: round(float(v.detach()), 3) for k, v in losses.items()})
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        results = model([s["image"] * 255 for s in samples])
    per_image = {s["image_id"]: r for s, r in zip(samples, results)}
    report = evaluate_dota(results_to_task1(per_image, CLASSES), tmp_path / "train" / "labelTxt", CLASSES)
    _log.info("mAP %.3f %s", report.mAP, report.per_class)
    assert report.mAP >= 0.9, report.per_class
