"""Effect of ``official_angle_rounding`` (MMRotate's float32 midpoint-offset decode) on proposals and detections.

Random-weight LSKNet-T Oriented R-CNN whose RPN midpoint offsets often saturate (as trained ones do on
axis-aligned objects), on a real DOTA image; the same model decodes proposals once with MMRotate's arithmetic
(default) and once with exact le90 angles. Prints how many proposals change their angle representation
(+pi/2 - eps vs -pi/2: the same rectangle pooled turned by 180 degrees) and how many final detections change.

    PYTHONPATH=src python benchmarks/bench_angle_rounding.py [--image IMAGE] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math

import torch

from lsknet.inference.predictor import load_image
from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.ops import MidpointOffsetCoder, rbox_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="../shared/data/dota_devkit_example/images/P1888.png")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    image = load_image(args.image)
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = build_oriented_rcnn("lsknet_t", num_classes=15).eval()
        with torch.no_grad():
            reg = model.rpn_head.rpn_reg.weight.view(3, 6, -1)
            reg[:, :4].normal_(0, 0.02)
            reg[:, 4:].normal_(0, 0.5)
        runs, props = {}, {}
        for official in (True, False):
            model.rpn_head.bbox_coder = MidpointOffsetCoder(official_rounding=official)
            with torch.no_grad():
                batch, sizes = model.preprocess([image])
                feats = model.extract_feats(batch)
                logits, deltas = model.rpn_head(feats)
                anchors = model.rpn_head.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], batch.device)
                p = model.rpn_head.proposals(logits, deltas, anchors, sizes, model.rpn_head.test_proposals)
                props[official] = p[0]
                runs[official] = model.roi_head.predict(feats, p, sizes)[0]
        a, b = props[True], props[False]
        same_order = a.shape == b.shape and torch.allclose(a[:, :4], b[:, :4], atol=1e-2)
        flipped = int(((a[:, 4] - b[:, 4]).abs() > 1.0).sum()) if same_order else -1
        near_vertical = int(((a[:, 4].abs() - math.pi / 2).abs() < 1e-3).sum())
        o, e = runs[True], runs[False]
        matched = 0
        if len(o["scores"]) and len(e["scores"]):
            iou = rbox_iou(o["rboxes"].double(), e["rboxes"].double())
            same = (iou > 0.999) & (o["labels"][:, None] == e["labels"][None]) & (
                (o["scores"][:, None] - e["scores"][None]).abs() < 1e-5
            )
            matched = int(same.any(dim=1).sum())
        print(
            f"seed {seed}: proposals {a.shape[0]}, near +-pi/2 {near_vertical}, angle representation differs "
            f"{flipped} ({100 * flipped / max(a.shape[0], 1):.2f} %); detections official {len(o['scores'])}, "
            f"exact-le90 {len(e['scores'])}, identical {matched} ({100 * matched / max(len(o['scores']), 1):.1f} %)"
        )


if __name__ == "__main__":
    main()
