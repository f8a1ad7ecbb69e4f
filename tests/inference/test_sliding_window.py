"""Sliding-window segmentation: equality with whole-image inference, strip bookkeeping against a naive full-image
accumulation, TTA against hand-applied flips, file outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lsknet.data.segmentation import tile_windows
from lsknet.errors import ConfigError
from lsknet.inference.sliding_window import SlidingWindowSegmenter, blend_weights, segment_file

torch.manual_seed(0)
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]


def pointwise_model(k: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, k, 1)).eval()


def local_model(k: int = 4) -> nn.Module:  # receptive field 5 x 5, zero padding at the borders
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, k, 3, padding=1)).eval()


def whole_image_probs(model: nn.Module, seg: SlidingWindowSegmenter, image: np.ndarray) -> torch.Tensor:
    return seg.probabilities([image])[0]


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, 4, 0), 4, 1)[:h, :w]  # some spatial structure


@pytest.mark.parametrize("tta", ["none", "d4"])
def test_pointwise_model_equals_whole_image(tta):
    model = pointwise_model()
    image = random_image(70, 95)
    seg = SlidingWindowSegmenter(model, window=32, overlap=8, batch_size=3, tta=tta)
    labels, conf = seg.predict(image)
    want = whole_image_probs(model, SlidingWindowSegmenter(model, window=32), image)
    np.testing.assert_array_equal(labels, want.argmax(0).numpy())
    np.testing.assert_allclose(conf.astype(np.float32), want.max(0).values.numpy(), atol=2e-3)


def test_local_model_within_blending_tolerance():
    model = local_model()
    h, w, win, ov = 96, 120, 48, 16
    image = random_image(h, w, seed=1)
    seg = SlidingWindowSegmenter(model, window=win, overlap=ov, batch_size=4, blend="gaussian")
    labels, _ = seg.predict(image)
    want = whole_image_probs(model, seg, image).argmax(0).numpy()
    # Pixels at least 2 px (the model's receptive-field radius) from the inner edges of every window covering them
    # see exactly the whole-image context in every window: there the result must be identical.
    exact = np.ones((h, w), bool)
    for y, x, wh, ww in tile_windows(h, w, win, win - ov):
        band = np.zeros((h, w), bool)
        band[y : y + wh, x : x + ww] = True
        inner = np.zeros((h, w), bool)
        inner[y + (2 if y > 0 else 0) : y + wh - (2 if y + wh < h else 0),
              x + (2 if x > 0 else 0) : x + ww - (2 if x + ww < w else 0)] = True  # fmt: skip
        exact &= ~(band & ~inner)
    assert exact.mean() > 0.8
    np.testing.assert_array_equal(labels[exact], want[exact])
    assert (labels == want).mean() > 0.98


def test_strips_equal_naive_full_accumulation():
    model = local_model(3)
    image = random_image(75, 53, seed=2)
    seg = SlidingWindowSegmenter(model, window=32, overlap=12, batch_size=3)
    labels, conf = seg.predict(image)
    # oracle: one full-size accumulator, every window at once
    acc = torch.zeros(3, 75, 53)
    wsum = torch.zeros(75, 53)
    for y, x, h, w in tile_windows(75, 53, 32, 20):
        p = seg.probabilities([image[y : y + h, x : x + w]])[0]
        wt = blend_weights(h, w)
        acc[:, y : y + h, x : x + w] += p * wt
        wsum[y : y + h, x : x + w] += wt
    np.testing.assert_array_equal(labels, acc.argmax(0).numpy())
    np.testing.assert_allclose(conf.astype(np.float32), (acc.max(0).values / wsum).numpy(), atol=1e-3)


def test_rows_are_streamed_in_order():
    calls = []
    seg = SlidingWindowSegmenter(pointwise_model(), window=16, overlap=4)
    image = random_image(50, 30)
    seg.run(
        type("S", (), {"shape": (50, 30), "read": lambda self, y, x, h, w: image[y : y + h, x : x + w]})(),
        lambda y, lab, c: calls.append((y, lab.shape)),
    )
    starts = sorted({y for y, *_ in tile_windows(50, 30, 16, 12)})
    assert [c[0] for c in calls] == starts  # one flush per row of windows
    assert sum(shape[0] for _, shape in calls) == 50 and all(shape[1] == 30 for _, shape in calls)


def test_flip_tta_by_hand():
    model = local_model(3)
    image = random_image(24, 40, seed=3)
    seg = SlidingWindowSegmenter(model, window=64, tta="flip", blend="uniform")  # one window = the whole image
    _, conf = seg.predict(image)
    x = seg._normalize([image])
    with torch.no_grad():
        p = model(x).softmax(1) + model(x.flip(-1)).softmax(1).flip(-1) + model(x.flip(-2)).softmax(1).flip(-2)
    np.testing.assert_allclose(conf.astype(np.float32), (p[0] / 3).max(0).values.numpy(), atol=1e-3)


def test_bad_settings():
    with pytest.raises(ConfigError, match="overlap"):
        SlidingWindowSegmenter(pointwise_model(), window=32, overlap=32)
    with pytest.raises(ConfigError, match="test-time augmentation"):
        SlidingWindowSegmenter(pointwise_model(), tta="rot45")
    with pytest.raises(ConfigError, match="blending"):
        SlidingWindowSegmenter(pointwise_model(), blend="cosine")


def test_png_outputs(tmp_path):
    model = pointwise_model()
    image = random_image(40, 56, seed=4)
    Image.fromarray(image).save(tmp_path / "scene.png")
    seg = SlidingWindowSegmenter(model, window=32, overlap=8)
    written = segment_file(seg, tmp_path / "scene.png", tmp_path / "out", PALETTE)
    assert set(written) == {"index", "color", "overlay"}
    labels = np.asarray(Image.open(written["index"]))
    np.testing.assert_array_equal(labels, seg.predict(image)[0])
    np.testing.assert_array_equal(np.asarray(Image.open(written["color"])), np.array(PALETTE, np.uint8)[labels])
    assert np.asarray(Image.open(written["overlay"])).shape == (40, 56, 3)


def test_segmenter_model_single_window_equals_forward():
    from lsknet.models.segmentation import build_segmenter

    model = build_segmenter("lsknet_t", "unetformer", 4, aux_head=False).eval()
    image = random_image(40, 72, seed=5)
    seg = SlidingWindowSegmenter(model, window=128)
    labels, _ = seg.predict(image)
    with torch.no_grad():
        want = model(seg._normalize([image])).argmax(1)[0].numpy()
    np.testing.assert_array_equal(labels, want)
