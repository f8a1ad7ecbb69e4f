"""Image corruptions: deterministic, shape-preserving, distortion (PSNR) monotone in severity."""

from __future__ import annotations

import numpy as np
import pytest

from lsknet.data.corruptions import CORRUPTIONS, corrupt, psnr
from lsknet.data.synthetic_scenes import SCENE_CLASSES, render_scene

NAMED = ["gaussian_noise", "gaussian_blur", "motion_blur", "jpeg", "downsample", "brightness", "contrast", "haze",
         "cloud"]


def _images() -> list[np.ndarray]:
    scenes = [render_scene(c, 72, 3, i) for c in SCENE_CLASSES for i in range(2)]
    rng = np.random.default_rng(5)
    return scenes + [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)]


def test_the_named_corruptions_exist():
    assert set(NAMED) <= set(CORRUPTIONS)


@pytest.mark.parametrize("name", NAMED)
def test_deterministic_shape_preserving_and_monotone(name):
    for img in _images():
        outs = [corrupt(img, name, s, seed=4) for s in range(1, 6)]
        for s, out in enumerate(outs, start=1):
            assert out.shape == img.shape and out.dtype == np.uint8
            assert np.array_equal(out, corrupt(img.copy(), name, s, seed=4))  # same seed, same result
        values = [psnr(img, o) for o in outs]
        assert all(b <= a + 1e-9 for a, b in zip(values, values[1:])), (name, values)
        assert values[-1] < values[0]  # severity 5 is visibly worse than 1
    gray = render_scene("farmland", 48, 0, 0)[:, :, 0]
    assert corrupt(gray, name, 3).shape == gray.shape
    rgba = np.dstack([render_scene("water", 48, 0, 0), np.full((48, 48), 255, np.uint8)])
    assert corrupt(rgba, name, 2).shape == rgba.shape


def test_random_corruptions_depend_on_the_seed():
    img = render_scene("forest", 64, 0, 0)
    for name in ("gaussian_noise", "cloud", "haze"):
        assert not np.array_equal(corrupt(img, name, 3, seed=0), corrupt(img, name, 3, seed=1)), name


def test_closed_form_corruptions():
    img = np.array([[[0, 100, 250]], [[40, 60, 200]]], np.uint8)
    bright = corrupt(img, "brightness", 2)  # + 0.2 * 255 = 51, clipped
    assert np.array_equal(bright, np.minimum(img.astype(int) + 51, 255))
    con = corrupt(img, "contrast", 5).astype(float)  # mean + 0.1 (x - mean) per channel
    mean = img.astype(float).mean(axis=(0, 1))
    assert np.allclose(con, np.round(mean + 0.1 * (img - mean)))
    flat = np.full((16, 16, 3), 90, np.uint8)
    for name in ("gaussian_blur", "motion_blur", "downsample"):  # a constant image is a fixed point of blurs
        assert np.array_equal(corrupt(flat, name, 5), flat), name


def test_bad_arguments():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(img, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(img, "jpeg", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(img.astype(np.float32), "jpeg", 1)
