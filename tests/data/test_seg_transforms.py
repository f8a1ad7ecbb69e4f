"""GeoSeg's UNetFormer training transforms against hand-derived expectations: scale (PIL nearest rule for the mask,
image kept aligned), SmartCrop's max-ratio rule and padding, flips/rot90 alignment, brightness/contrast lookup,
mosaic geometry, and the dataset end to end (every pixel's colour still encodes its class)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from lsknet.data.seg_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GeoSegTransform,
    brightness_contrast,
    crop_is_balanced,
    mosaic,
    random_scale,
    smart_crop,
)
from lsknet.data.segmentation import SegmentationDataset, mask_coding

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], dtype=np.uint8)


class ScriptedRng:
    """Stands in for ``random``: returns scripted values and records the calls."""

    def __init__(self, randints=(), randoms=(), uniforms=(), choices=()):
        self.randints, self.randoms = list(randints), list(randoms)
        self.uniforms, self.choices = list(uniforms), list(choices)
        self.calls: list[tuple] = []

    def randint(self, a, b):
        v = self.randints.pop(0)
        assert a <= v <= b, (a, v, b)
        self.calls.append(("randint", a, b))
        return v

    def random(self):
        return self.randoms.pop(0)

    def uniform(self, a, b):
        v = self.uniforms.pop(0)
        assert a <= v <= b
        return v

    def choice(self, seq):
        v = self.choices.pop(0)
        assert v in seq
        return v


def _blocks(h, w, block, seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, size=(math.ceil(h / block), math.ceil(w / block)))
    mask = np.kron(cls, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)
    return PALETTE[mask], mask


def test_random_scale_mask_follows_pil_nearest_and_image_stays_aligned():
    image, mask = _blocks(16, 24, 8)
    out_img, out_mask = random_scale(image, mask, [1.5], ScriptedRng(choices=[1.5]))
    assert out_img.shape == (24, 36, 3) and out_mask.shape == (24, 36)
    # PIL nearest: source index floor((dst + 0.5) * in / out)
    rows = np.floor((np.arange(24) + 0.5) * 16 / 24).astype(int)
    cols = np.floor((np.arange(36) + 0.5) * 24 / 36).astype(int)
    np.testing.assert_array_equal(out_mask, mask[rows][:, cols])
    # block interiors (2 px away from any block edge in the output) keep their exact colour under bicubic
    interior = np.zeros((24, 36), bool)
    for y in range(24):
        for x in range(36):
            interior[y, x] = (y % 12) in range(2, 10) and (x % 12) in range(2, 10)
    np.testing.assert_array_equal(out_img[interior], PALETTE[out_mask[interior]])


def test_crop_is_balanced_rule():
    ig = 255
    assert not crop_is_balanced(np.array([0, 0, 0, 1]), 0.75, ig)  # 0.75 is not < 0.75
    assert crop_is_balanced(np.array([0, 0, 1, 1]), 0.75, ig)
    assert crop_is_balanced(np.array([0, 0, 1, 2]), 0.75, ig)
    assert not crop_is_balanced(np.array([3, 3, 3, 3]), 0.75, ig)  # one class
    assert crop_is_balanced(np.array([0, 1, ig, ig, ig, ig]), 0.75, ig)  # ignore does not count
    assert not crop_is_balanced(np.array([0, 0, 0, 1, ig, ig]), 0.75, ig)
    assert not crop_is_balanced(np.array([ig, ig]), 0.75, ig)


def test_smart_crop_redraws_until_balanced():
    mask = np.zeros((4, 8), np.uint8)
    mask[:, 4:] = 1
    image = PALETTE[mask]
    rng = ScriptedRng(randints=[0, 2])  # y is fixed (h == size): only x is drawn; x=0 all class 0, x=2 balanced
    img_c, mask_c = smart_crop(image, mask, 4, 0.75, 255, rng)
    np.testing.assert_array_equal(mask_c, mask[:, 2:6])
    np.testing.assert_array_equal(img_c, image[:, 2:6])
    assert len(rng.calls) == 2


def test_smart_crop_keeps_the_11th_crop_when_none_is_balanced():
    mask = np.zeros((4, 8), np.uint8)
    image = PALETTE[mask]
    xs = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 3]
    rng = ScriptedRng(randints=xs)
    img_c, mask_c = smart_crop(image, mask, 4, 0.75, 255, rng)
    assert len(rng.calls) == 11 and rng.randints == []
    np.testing.assert_array_equal(img_c, image[:, 3:7])


def test_smart_crop_pads_small_images_centred():
    image, mask = _blocks(3, 3, 1, seed=2)
    # size 6 > 3: pad (6 - 3) // 2 + 1 = 2 each side -> 7 x 7, then a 6 x 6 crop at (y, x) = (1, 0)
    rng = ScriptedRng(randints=[1, 0] * 11)
    img_c, mask_c = smart_crop(image, mask, 6, 0.75, 255, rng)
    padded_mask = np.full((7, 7), 255, np.uint8)
    padded_mask[2:5, 2:5] = mask
    padded_img = np.zeros((7, 7, 3), np.uint8)
    padded_img[2:5, 2:5] = image
    np.testing.assert_array_equal(mask_c, padded_mask[1:7, 0:6])
    np.testing.assert_array_equal(img_c, padded_img[1:7, 0:6])


def test_flips_rot90_keep_mask_aligned_and_match_hand_results():
    image, mask = _blocks(6, 10, 2, seed=3)
    t = GeoSegTransform(hflip=True, vflip=True, rot90=True)
    # random() < p draws: hflip yes, vflip no, rot90 yes with k = 1 (counter-clockwise quarter turn)
    img, m = t(image, mask, ScriptedRng(randoms=[0.1, 0.9, 0.2], randints=[1]))
    want = np.rot90(mask[:, ::-1], 1)
    np.testing.assert_array_equal(m, want)
    assert m[0, 0] == mask[0, 0] and m.shape == (10, 6)  # corner check: hflip then ccw rotation moves (0,0) back
    np.testing.assert_array_equal(img, PALETTE[m])


def test_brightness_contrast_lookup_by_hand():
    v = np.array([[0, 10, 100, 250]], np.uint8)
    # 100 * 1.2 + 0.1 * 255 = 145.5 -> 145; 250 -> 325.5 -> 255; 10 -> 37.5 -> 37; 0 -> 25.5 -> 25
    np.testing.assert_array_equal(brightness_contrast(v, 1.2, 0.1), [[25, 37, 145, 255]])
    # 10 * 0.8 - 63.75 < 0 -> 0; 250 * 0.8 - 63.75 = 136.25 -> 136
    np.testing.assert_array_equal(brightness_contrast(v, 0.8, -0.25), [[0, 0, 16, 136]])
    t = GeoSegTransform(brightness_contrast={"brightness": 0.25, "contrast": 0.25, "p": 0.25})
    rng = ScriptedRng(randoms=[0.2], uniforms=[0.2, 0.1])  # applied (0.2 < 0.25); alpha 1.2, beta 0.1
    img, m = t(np.stack([v[0]] * 3, -1)[None], np.zeros((1, 4), np.uint8), rng)
    np.testing.assert_array_equal(img[0, :, 0], [25, 37, 145, 255])


def test_mosaic_geometry():
    samples = []
    for i in range(4):
        img = np.zeros((10, 10, 3), np.uint8)
        img[..., 0] = np.arange(10)[:, None] * 10 + np.arange(10)[None, :]  # position code
        img[..., 1] = 50 * (i + 1)
        samples.append((img, np.full((10, 10), i, np.uint8)))
    h, w = 8, 12
    # ox in [3, 9] -> 5; oy in [2, 6] -> 3; crop positions (y, x) per quadrant
    crops = [(1, 2), (0, 0), (3, 4), (5, 3)]
    rng = ScriptedRng(randints=[5, 3] + [v for c in crops for v in c])
    canvas, labels = mosaic(samples, (h, w), rng)
    assert rng.calls[:2] == [("randint", 3, 9), ("randint", 2, 6)]
    quads = [(0, 0, 3, 5), (0, 5, 3, 7), (3, 0, 5, 5), (3, 5, 5, 7)]  # (y0, x0, h, w)
    for i, ((y0, x0, qh, qw), (cy, cx)) in enumerate(zip(quads, crops)):
        np.testing.assert_array_equal(labels[y0 : y0 + qh, x0 : x0 + qw], i)
        np.testing.assert_array_equal(canvas[y0 : y0 + qh, x0 : x0 + qw, 1], 50 * (i + 1))
        np.testing.assert_array_equal(canvas[y0 : y0 + qh, x0 : x0 + qw], samples[i][0][cy : cy + qh, cx : cx + qw])


def test_dataset_with_mosaic_and_geoseg_transform_keeps_pixels_aligned(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    pairs = []
    for i in range(3):
        image, mask = _blocks(40, 40, 5, seed=10 + i)
        Image.fromarray(image).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "ann" / f"{i}.png")
        pairs.append((tmp_path / "img" / f"{i}.png", tmp_path / "ann" / f"{i}.png"))
    coding = mask_coding("folder", 4)
    t = GeoSegTransform(scales=[1.0], crop_size=32, hflip=True, vflip=True, rot90=True,
                        brightness_contrast=None)  # fmt: skip
    ds = SegmentationDataset(pairs, coding, t, mosaic_ratio=1.0, mosaic_size=40)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    for k in range(6):
        s = ds[k % 3]
        img = ((s["image"].permute(1, 2, 0).numpy() * std + mean) * 255).round().astype(int)
        m = s["mask"].numpy()
        assert img.shape[:2] == m.shape == (32, 32)
        valid = m != 255
        np.testing.assert_array_equal(img[valid], PALETTE[m[valid]])


def test_bad_probability_is_a_config_error():
    from lsknet.errors import ConfigError

    with pytest.raises(ConfigError, match="hflip"):
        GeoSegTransform(hflip=1.5)
    with pytest.raises(ConfigError, match="brightness_contrast"):
        GeoSegTransform(brightness_contrast={"gamma": 1})


def test_geoseg_patch_split_flip_copies_and_padded_tiles(tmp_path):
    # GeoSeg's ISPRS patch split (train): image, h-flipped copy, v-flipped copy, each padded bottom/right to a
    # multiple of the tile (image 0, mask ignore), full tiles on the stride grid. 12 x 20 image, tile 8, stride 8:
    # padded 16 x 24 -> 2 x 3 tiles per copy -> 18 items.
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    image, mask = _blocks(12, 20, 2, seed=7)
    Image.fromarray(image).save(tmp_path / "img" / "a.png")
    Image.fromarray(mask).save(tmp_path / "ann" / "a.png")
    pairs = [(tmp_path / "img" / "a.png", tmp_path / "ann" / "a.png")]
    ds = SegmentationDataset(pairs, mask_coding("folder", 4), None, tile_size=8, tile_stride=8, flip_copies=True,
                             tile_pad=True)  # fmt: skip
    assert len(ds) == 18
    for flip, src_img, src_mask in ((None, image, mask), ("h", image[:, ::-1], mask[:, ::-1]),
                                    ("v", image[::-1], mask[::-1])):  # fmt: skip
        pad_img = np.zeros((16, 24, 3), np.uint8)
        pad_img[:12, :20] = src_img
        pad_mask = np.full((16, 24), 255, np.uint8)
        pad_mask[:12, :20] = src_mask
        tiles = [(y, x) for y in (0, 8) for x in (0, 8, 16)]
        got = {(y, x): ds.sample(k) for k, (_, (y, x, _, _), f) in enumerate(ds.items) if f == flip}
        assert sorted(got) == tiles
        for y, x in tiles:
            img, m, _ = got[(y, x)]
            np.testing.assert_array_equal(img, pad_img[y : y + 8, x : x + 8])
            np.testing.assert_array_equal(m, pad_mask[y : y + 8, x : x + 8])
