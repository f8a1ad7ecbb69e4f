"""Predictor: tiling geometry, window offsets and merging (with a stand-in detector whose answer is known),
image loading of odd modes, result objects and output files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.data.dota import read_task1_dir
from lsknet.errors import CheckpointError, DatasetFormatError, DataSkipWarning
from lsknet.inference.predictor import (
    Detections,
    Predictor,
    draw_detections,
    load_image,
    tile_origins,
    write_outputs,
)


class BrightSquareDetector(torch.nn.Module):
    """Stand-in detector: in each window, one box around the bright pixels (value > 200 in channel 0), class 1,
    score = visible fraction of a 20 x 20 square. Records the window sizes it saw."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    def forward(self, images):
        self.calls.append(len(images))
        out = []
        for img in images:
            self.shapes.append(tuple(img.shape[1:]))
            ys, xs = torch.nonzero(img[0] > 200, as_tuple=True)
            if ys.numel() == 0:
                out.append({"rboxes": torch.zeros(0, 5), "scores": torch.zeros(0), "labels": torch.zeros(0).long()})
                continue
            x1, x2, y1, y2 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
            box = torch.tensor([[(x1 + x2) / 2, (y1 + y2) / 2, float(x2 - x1), float(y2 - y1), 0.0]])
            out.append({"rboxes": box, "scores": torch.tensor([ys.numel() / 400.0]), "labels": torch.tensor([1])})
        return out


def test_tile_origins_by_hand():
    assert tile_origins(1000, 400, 100) == [0, 300, 600]
    assert tile_origins(1100, 400, 100) == [0, 300, 600, 700]  # last window shifted to the border
    assert tile_origins(300, 400, 100) == [0]
    assert tile_origins(400, 400, 0) == [0]
    with pytest.raises(ValueError):
        tile_origins(100, 50, 50)


def test_tiled_prediction_shifts_and_merges_windows():
    image = np.zeros((300, 500, 3), np.uint8)
    image[130:150, 240:260] = 255  # a 20 x 20 square, fully inside several overlapping 128-px windows
    model = BrightSquareDetector()
    predictor = Predictor(model, ["a", "b"], tile_size=128, overlap=48, batch_size=5)
    det = predictor.predict_image(image)
    ys, xs = tile_origins(300, 128, 48), tile_origins(500, 128, 48)
    assert sum(model.calls) == len(ys) * len(xs) and max(model.calls) <= 5
    assert set(model.shapes) == {(128, 128)}
    # duplicates from overlapping windows merged into one, at the square's position in the full image
    assert len(det) == 1 and det.names == ["b"]
    torch.testing.assert_close(det.rboxes[0], torch.tensor([250.0, 140.0, 20.0, 20.0, 0.0]))
    assert det.scores[0].item() == pytest.approx(1.0)
    assert det.image_size == (300, 500) and det.extra["num_tiles"] == len(ys) * len(xs)


class GridDetector(torch.nn.Module):
    """Stand-in detector: a 2 x 2 box every 4 px of each window (no two overlap), class 0, distinct scores."""

    num_classes = 1

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for img in images:
            h, w = img.shape[1:]
            yy, xx = torch.meshgrid(torch.arange(2, h, 4.0), torch.arange(2, w, 4.0), indexing="ij")
            n = yy.numel()
            boxes = torch.stack([xx.flatten(), yy.flatten(), torch.full((n,), 2.0), torch.full((n,), 2.0),
                                 torch.zeros(n)], 1)  # fmt: skip
            out.append({"rboxes": boxes, "scores": torch.linspace(0.9, 0.1, n), "labels": torch.zeros(n).long()})
        return out


def test_merging_windows_keeps_every_detection_unless_capped():
    # 3 disjoint 128-px windows of 32 x 32 = 1024 boxes each: the official merge (per-class NMS, no maximum)
    # keeps all 3072; the per-window cap is the model's business
    image = torch.zeros(3, 128, 384)
    det = Predictor(GridDetector(), ["a"], tile_size=128, overlap=0).predict_image(image)
    assert det.extra["num_tiles"] == 3 and len(det) == 3 * 1024
    assert sorted(det.rboxes[:, 0].unique().tolist()) == [2.0 + 4 * i for i in range(96)]
    capped = Predictor(GridDetector(), ["a"], tile_size=128, overlap=0, max_per_img=100).predict_image(image)
    assert len(capped) == 100 and bool((capped.scores >= det.scores.sort(descending=True).values[99]).all())


def test_small_images_run_whole_and_keep_input_order(tmp_path):
    model = BrightSquareDetector()
    predictor = Predictor(model, ["a", "b"], tile_size=256, overlap=64, batch_size=3)
    paths = []
    for i, (h, w) in enumerate([(100, 120), (64, 64), (200, 90)]):
        arr = np.zeros((h, w, 3), np.uint8)
        arr[10 + i : 30 + i, 20:40] = 255
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    results = list(predictor.predict(paths))
    assert [r.image_id for r in results] == ["img0", "img1", "img2"]
    assert [r.image_size for r in results] == [(100, 120), (64, 64), (200, 90)]
    for i, r in enumerate(results):
        torch.testing.assert_close(r.rboxes[0, :2], torch.tensor([30.0, 20.0 + i]))
    assert model.calls == [3]  # the three single-window images shared one batch


def test_unreadable_image_is_error_or_counted_skip(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    predictor = Predictor(BrightSquareDetector(), ["a", "b"], tile_size=64, overlap=16)
    with pytest.raises(DatasetFormatError, match="bad.png"):
        list(predictor.predict([bad, good]))
    with pytest.warns(DataSkipWarning, match="bad.png"):
        results = list(predictor.predict([bad, good], strict=False))
    assert [r.image_id for r in results] == ["good"]


def test_class_names_must_match_the_model():
    with pytest.raises(CheckpointError, match="2 classes"):
        Predictor(BrightSquareDetector(), ["only-one"])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_modes_give_rgb_0_255(tmp_path, mode):
    base = np.zeros((8, 10), np.uint8)
    base[2, 3] = 200
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 50)  # 16-bit grey (mode I;16)
    else:
        img = Image.fromarray(np.stack([base] * 3, -1), "RGB").convert(mode)
    path = tmp_path / f"x.{'tif' if mode in ('I;16', 'CMYK') else 'png'}"
    img.save(path)
    t = load_image(path)
    assert t.shape == (3, 8, 10) and t.dtype == torch.float32
    assert 0 <= t.min() and t.max() <= 255
    assert t[:, 2, 3].min() > 150 and t[:, 0, 0].max() < 30  # the bright pixel stays the brightest


def test_load_image_rejects_bad_shapes():
    with pytest.raises(DatasetFormatError):
        load_image(np.zeros((4, 4, 5)))
    with pytest.raises(DatasetFormatError):
        load_image(torch.zeros(4, 8, 8))


def _detections() -> Detections:
    return Detections(
        "img",
        torch.tensor([[10.0, 20.0, 4.0, 2.0, 0.0], [30.0, 30.0, 10.0, 4.0, math.pi / 4]]),
        torch.tensor([0.9, 0.4]),
        torch.tensor([1, 0]),
        ("car", "ship"),
        (50, 60),
    )


def test_result_corners_names_and_json():
    det = _detections()
    torch.testing.assert_close(det.corners[0], torch.tensor([[8.0, 19.0], [12.0, 19.0], [12.0, 21.0], [8.0, 21.0]]))
    assert det.names == ["ship", "car"]
    d = det.to_dict()
    assert d["height"] == 50 and d["width"] == 60
    assert d["detections"][1]["class"] == "car" and d["detections"][1]["rbox"][4] == pytest.approx(math.pi / 4, 1e-3)
    assert len(det.select(det.scores > 0.5)) == 1


def test_write_outputs_round_trip(tmp_path):
    image_path = tmp_path / "img.png"
    Image.fromarray(np.full((50, 60, 3), 90, np.uint8)).save(image_path)
    det = _detections()
    det.path = image_path
    written = write_outputs([det], tmp_path / "out", draw_score_thr=0.3)
    task1 = read_task1_dir(tmp_path / "out" / "task1", ["car", "ship"])
    assert list(task1["ship"].image_ids) == ["img"] and task1["ship"].scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(task1["ship"].polys[0], [[8, 19], [12, 19], [12, 21], [8, 21]], atol=0.01)
    assert len(task1["car"].scores) == 1
    data = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert data[0]["image_id"] == "img" and len(data[0]["detections"]) == 2
    png = Image.open(written["png_files"][0])
    assert png.size == (60, 50)


def test_drawing_colours_the_box_outline():
    det = Detections(
        "img",
        torch.tensor([[20.0, 20.0, 20.0, 10.0, 0.0], [45.0, 35.0, 10.0, 6.0, 0.3]]),
        torch.tensor([0.9, 0.4]),
        torch.tensor([1, 0]),
        ("car", "ship"),
        (50, 60),
    )
    canvas = np.asarray(draw_detections(np.zeros((50, 60, 3), np.uint8), det, score_thr=0.5, labels=False))
    assert canvas[15, 20].tolist() != [0, 0, 0]  # on the top edge (y = 15) of the 0.9 box
    assert canvas[20, 20].tolist() == [0, 0, 0]  # its centre stays untouched
    assert canvas[32, 45].tolist() == [0, 0, 0]  # the 0.4 box is below the drawing threshold
