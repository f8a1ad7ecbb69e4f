"""Detection dataset and box-aware transforms: boxes checked against transformed masks and hand geometry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lsknet.data.detection import (
    Compose,
    DOTADetectionDataset,
    RandomFlip,
    Resize,
    collate_detection,
    hflip,
    rotate,
    rotate90,
    train_transforms,
)
from lsknet.data.synthetic import SYNTH_CLASSES, generate_dota_scenes
from lsknet.errors import DatasetFormatError


def _mask(polys: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose centre (x + 0.5, y + 0.5) lies inside a polygon (pixel i spans [i, i + 1])."""
    from matplotlib.path import Path as MplPath

    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    m = np.zeros(h * w, bool)
    for q in polys:
        m |= MplPath(np.asarray(q, np.float64)).contains_points(centres)
    return m.reshape(h, w)


def _sample_with_mask(h: int = 96, w: int = 128) -> dict:
    """An image whose first channel is exactly the rasterised objects (so transforms can be checked)."""
    polys = np.array(
        [
            [[10, 10], [40, 10], [40, 25], [10, 25]],
            [[70, 40], [100, 55], [92, 71], [62, 56]],
            [[30, 60], [50, 60], [50, 80], [30, 80]],
        ],
        dtype=np.float32,
    )
    img = torch.zeros(3, h, w)
    img[0] = torch.from_numpy(_mask(polys, h, w).astype(np.float32))
    sample = {
        "image": img,
        "polys": torch.from_numpy(polys),
        "labels": torch.tensor([0, 1, 2]),
        "difficult": torch.tensor([False, True, False]),
        "image_id": "x",
        "size": (h, w),
    }
    from lsknet.data.detection import refresh

    return refresh(sample)


def _mask_iou(sample: dict) -> float:
    h, w = sample["size"]
    drawn = sample["image"][0].numpy() > 0.5
    boxes = _mask(sample["polys"].numpy(), h, w)
    return float((drawn & boxes).sum() / max(1, (drawn | boxes).sum()))


@pytest.mark.parametrize(
    "op",
    [
        lambda s: rotate90(s, 1),
        lambda s: rotate90(s, 2),
        lambda s: rotate90(s, 3),
        lambda s: rotate(s, 30.0),
        lambda s: rotate(s, -75.0),
        Resize((144, 200)),
        Resize(256, keep_ratio=True),
    ],
)
def test_transformed_boxes_cover_the_transformed_objects(op):
    s = _sample_with_mask()
    assert _mask_iou(s) > 0.9  # sanity of the set-up
    t = op(s)
    assert t["image"].shape[-2:] == t["size"]
    assert _mask_iou(t) > 0.9
    # rboxes agree with polys (area and centre) and are le90
    area = 0.5 * torch.abs(
        (
            t["polys"][:, :, 0] * t["polys"][:, :, 1].roll(-1, 1)
            - t["polys"][:, :, 0].roll(-1, 1) * t["polys"][:, :, 1]
        ).sum(1)
    )
    rect_area = t["rboxes"][:, 2] * t["rboxes"][:, 3]
    if isinstance(op, Resize):  # anisotropic scaling turns rectangles into parallelograms: the rbox covers them
        assert (rect_area >= area * (1 - 1e-4)).all()
    else:
        torch.testing.assert_close(rect_area, area, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(t["rboxes"][:, :2], t["polys"].mean(1), rtol=1e-4, atol=1e-3)
    assert (t["rboxes"][:, 2] >= t["rboxes"][:, 3] - 1e-4).all()
    assert (t["rboxes"][:, 4] >= -math.pi / 2 - 1e-6).all() and (t["rboxes"][:, 4] < math.pi / 2 + 1e-6).all()


def test_flip_and_rotate90_by_hand():
    s = _sample_with_mask(h=96, w=128)
    f = hflip(s)  # MMRotate RRandomFlip: cx -> W - cx - 1
    torch.testing.assert_close(f["rboxes"][0, :2], torch.tensor([128 - 25.0 - 1, 17.5]))
    r = rotate90(s, 1)  # counter-clockwise on screen: (x, y) -> (y, W - x), canvas (W, H)
    assert r["size"] == (128, 96)
    torch.testing.assert_close(r["rboxes"][0, :2], torch.tensor([17.5, 128 - 25.0]))
    torch.testing.assert_close(r["rboxes"][0, 2:4], torch.tensor([30.0, 15.0]))
    assert abs(abs(float(r["rboxes"][0, 4])) - math.pi / 2) < 1e-5 or abs(float(r["rboxes"][0, 4]) + math.pi / 2) < 1e-5
    assert r["labels"].tolist() == [0, 1, 2] and r["difficult"].tolist() == [False, True, False]


def test_random_flip_probabilities():
    s = _sample_with_mask()
    assert RandomFlip(0, 0, 0)(s) is s
    out = RandomFlip(1.0, 0, 0)(s)
    torch.testing.assert_close(out["polys"].mean(1)[:, 0], 127 - s["polys"].mean(1)[:, 0])
    with pytest.raises(ValueError):
        RandomFlip(0.6, 0.6, 0.0)


def test_dataset_and_collate(tmp_path: Path):
    generate_dota_scenes(tmp_path, num_images=3, size=128, seed=0, objects_per_image=(3, 5))
    ds = DOTADetectionDataset(tmp_path, classes=SYNTH_CLASSES, transforms=train_transforms(SYNTH_CLASSES, rotate_p=0.5))
    assert len(ds) == 3 and ds.image_ids == ["S0_00000", "S0_00001", "S0_00002"]
    s = ds[0]
    assert (
        s["image"].dtype == torch.float32
        and s["image"].shape == (3, 128, 128)
        and 0 <= s["image"].min() <= s["image"].max() <= 1
    )
    n = len(s["labels"])
    assert s["polys"].shape == (n, 4, 2) and s["rboxes"].shape == (n, 5) and s["difficult"].dtype == torch.bool
    batch = collate_detection([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 128, 128) and len(batch["rboxes"]) == 2
    sub = DOTADetectionDataset(tmp_path, classes=SYNTH_CLASSES, image_ids=["S0_00001"])
    assert sub.image_ids == ["S0_00001"]
    with pytest.raises(DatasetFormatError):
        DOTADetectionDataset(tmp_path, classes=SYNTH_CLASSES, image_ids=["nope"])
    raw = DOTADetectionDataset(tmp_path, classes=SYNTH_CLASSES)[2]
    ann_lines = (tmp_path / "labelTxt" / "S0_00002.txt").read_text().splitlines()[2:]
    assert len(raw["labels"]) == len(ann_lines)
    first = [float(v) for v in ann_lines[0].split()[:8]]
    torch.testing.assert_close(raw["polys"][0].reshape(-1), torch.tensor(first))
    assert raw["labels"][0] == SYNTH_CLASSES.index(ann_lines[0].split()[8])


def test_undecodable_image_is_a_clear_error(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labelTxt").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "labelTxt" / "bad.txt").write_text("")
    ds = DOTADetectionDataset(tmp_path)
    with pytest.raises(DatasetFormatError, match="bad.png"):
        ds[0]


def test_compose_runs_in_order():
    s = _sample_with_mask()
    out = Compose([hflip, hflip])(s)
    torch.testing.assert_close(out["polys"].mean(1), s["polys"].mean(1))
    torch.testing.assert_close(out["image"], s["image"])


def test_resize_scales_corners_exactly():
    s = _sample_with_mask()
    t = Resize((48, 200))(s)
    torch.testing.assert_close(t["polys"], s["polys"] * torch.tensor([200 / 128, 48 / 96]))


def test_image_without_objects_is_an_empty_sample_through_the_transforms(tmp_path: Path):
    generate_dota_scenes(tmp_path, num_images=1, size=64, seed=3, objects_per_image=(0, 0),
                         dense_probability=0.0, truncated_fraction=0.0)  # fmt: skip
    ds = DOTADetectionDataset(tmp_path, classes=SYNTH_CLASSES, transforms=train_transforms(SYNTH_CLASSES, rotate_p=1.0))
    sample = ds[0]
    assert sample["polys"].shape == (0, 4, 2) and sample["rboxes"].shape == (0, 5)
    assert sample["labels"].dtype == torch.int64 and sample["difficult"].dtype == torch.bool
    assert len(sample["labels"]) == len(sample["difficult"]) == 0
