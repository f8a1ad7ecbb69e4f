"""Scene folders: decoding of bit depths / channel layouts, bad files, stratified splits, transforms."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.data.scene import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomRot90,
    SceneFolderDataset,
    build_transforms,
    find_classes,
    load_image,
    scan_scene_folder,
    stratified_split,
)
from lsknet.data.synthetic_scenes import SCENE_CLASSES, generate_scene_dataset, render_scene
from lsknet.errors import DatasetFormatError, DataSkipWarning


def _tree(root: Path, counts: dict[str, int], size: int = 8) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert (out == np.array([10, 20, 30])).all()


def test_grayscale_is_repeated_to_three_channels(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 7
    Image.fromarray(gray, "L").save(tmp_path / "g.jpg", quality=100)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    assert load_image(tmp_path / "g.jpg").shape == (4, 5, 3)


def test_palette_image_becomes_rgb(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:3] = (255, 0, 0)
    rgb[3:] = (0, 0, 255)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, rgb)


def test_16bit_range_scaling_divides_by_257(tmp_path):
    values = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0, 257, ..., 65535
    Image.fromarray(values).save(tmp_path / "r.png")
    out = load_image(tmp_path / "r.png", high_bit="range")
    np.testing.assert_array_equal(out[..., 0], np.arange(256).reshape(16, 16))


def test_16bit_percentile_stretch_maps_1st_99th_percentile_to_0_255(tmp_path):
    values = np.linspace(1000, 4000, 101 * 100).astype(np.uint16).reshape(101, 100)  # 12-bit-like data
    Image.fromarray(values).save(tmp_path / "s.png")
    out = load_image(tmp_path / "s.png")[..., 0].astype(int)
    low, high = np.percentile(values.astype(float), [1, 99])
    expected = np.clip(np.round((values.astype(float) - low) * 255 / (high - low)), 0, 255)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255  # the stretch uses the full 8-bit range


def test_16bit_multiband_tiff_read_through_rasterio(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    bands = np.stack([np.full((5, 6), v * 257, np.uint16) for v in (10, 100, 200)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", width=6, height=5, count=3, dtype="uint16") as dst:
            dst.write(bands)
    out = load_image(tmp_path / "m.tif", high_bit="range")
    assert out.shape == (5, 6, 3)
    assert out[0, 0].tolist() == [10, 100, 200]


def test_too_many_channels_is_an_error(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "ms.tif", "w", driver="GTiff", width=4, height=4, count=6, dtype="uint8") as dst:
            dst.write(np.zeros((6, 4, 4), np.uint8))
    with pytest.raises(DatasetFormatError, match="ms.tif.*6 channels"):
        load_image(tmp_path / "ms.tif")


def test_corrupt_and_truncated_images_are_skipped_with_warning_and_counted(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 3, "b": 2})
    (root / "README.md").write_text("not a class")
    (root / "a" / "notes.txt").write_text("ignored: not an image extension")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "b" / "t.jpg")
    data = (root / "b" / "t.jpg").read_bytes()
    (root / "b" / "t.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "a" / "garbage.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(DataSkipWarning) as record:
        samples, summary = scan_scene_folder(root)
    messages = " ".join(str(w.message) for w in record)
    assert "t.jpg" in messages and "garbage.png" in messages
    assert len(summary.skipped) == 2
    assert summary.counts == {"a": 3, "b": 2}
    assert len(samples) == 5 and "2 unreadable" in str(summary)
    assert [label for _, label in samples] == [0, 0, 0, 1, 1]
    with pytest.raises(DatasetFormatError, match="garbage.png|t.jpg"):
        scan_scene_folder(root, strict=True)


def test_empty_class_folder_and_missing_root_are_errors(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 2})
    (root / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="empty"):
        scan_scene_folder(root)
    with pytest.raises(DatasetFormatError, match="not found"):
        find_classes(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetFormatError, match="no class sub-folders"):
        find_classes(tmp_path / "flat")


def test_class_folder_of_only_broken_images_is_an_error(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "x.jpg").write_bytes(b"broken")
    with pytest.warns(DataSkipWarning), pytest.raises(DatasetFormatError, match="no readable images"):
        scan_scene_folder(root)


@pytest.mark.parametrize("ratio,n_per_class,expected_train", [(0.2, 10, 2), (0.5, 10, 5), (0.1, 45, 4), (0.2, 7, 1)])
def test_stratified_split_counts_per_class(ratio, n_per_class, expected_train):
    labels = [c for c in range(4) for _ in range(n_per_class)]
    train, held = stratified_split(labels, ratio, seed=3)
    assert sorted(train + held) == list(range(len(labels)))  # a partition
    for c in range(4):
        assert sum(labels[i] == c for i in train) == expected_train  # round(n * ratio) per class
        assert sum(labels[i] == c for i in held) == n_per_class - expected_train


def test_stratified_split_is_seeded():
    labels = [c for c in range(3) for _ in range(20)]
    assert stratified_split(labels, 0.2, seed=1) == stratified_split(labels, 0.2, seed=1)
    assert stratified_split(labels, 0.2, seed=1) != stratified_split(labels, 0.2, seed=2)


def test_stratified_split_keeps_one_sample_each_side():
    train, held = stratified_split([0, 0, 1, 1, 1], 0.01)
    assert len(train) == 2 and len(held) == 3
    with pytest.raises(DatasetFormatError):
        stratified_split([0, 1], 1.0)


def test_eval_transform_normalises_with_imagenet_statistics():
    image = torch.full((3, 10, 12), 255, dtype=torch.uint8)
    out = build_transforms(16, train=False)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    for c in range(3):
        assert out[c].mean().item() == pytest.approx((1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-5)


def test_train_transform_output_shape_and_randomness():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    transform = build_transforms(24, train=True, aug={"color_jitter": 0.2})
    outs = [transform(image) for _ in range(4)]
    assert all(o.shape == (3, 24, 24) for o in outs)
    assert not torch.equal(outs[0], outs[1])


def test_random_rot90_draws_each_of_the_four_rotations():
    torch.manual_seed(0)
    image = torch.arange(6.0).view(1, 2, 3)
    expected = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    seen = set()
    for _ in range(100):
        out = RandomRot90()(image)
        seen.add(next(k for k, e in enumerate(expected) if e.shape == out.shape and torch.equal(e, out)))
    assert seen == {0, 1, 2, 3}


def test_dataset_returns_transformed_tensor_and_label(tmp_path):
    root = _tree(tmp_path / "ds", {"x": 1, "y": 2}, size=10)
    samples, summary = scan_scene_folder(root)
    dataset = SceneFolderDataset(samples, summary.classes, build_transforms(8, train=False))
    image, label = dataset[2]
    assert image.shape == (3, 8, 8) and label == 1
    assert dataset.targets == [0, 1, 1]


def test_synthetic_scenes_are_deterministic_and_class_distinct(tmp_path):
    np.testing.assert_array_equal(render_scene("forest", 32, 5, 3), render_scene("forest", 32, 5, 3))
    assert not np.array_equal(render_scene("forest", 32, 5, 3), render_scene("forest", 32, 6, 3))
    root = generate_scene_dataset(tmp_path / "syn", per_class=2, size=32, seed=0)
    samples, summary = scan_scene_folder(root)
    assert summary.classes == sorted(SCENE_CLASSES) and len(samples) == 2 * len(SCENE_CLASSES)
    # Mean colours differ between e.g. water (blue) and desert (sand): blue channel dominates only in water.
    water, desert = render_scene("water", 32, 0, 0).mean((0, 1)), render_scene("desert", 32, 0, 0).mean((0, 1))
    assert water[2] > water[0] and desert[0] > desert[2]


@pytest.mark.realdata
def test_scan_real_aid_subset(shared_data):
    samples, summary = scan_scene_folder(shared_data / "aid_150px_subset")
    assert len(summary.classes) == 30 and len(samples) == 300 and not summary.skipped
    image = load_image(samples[0][0])
    assert image.shape == (150, 150, 3) and image.dtype == np.uint8
    train, held = stratified_split([label for _, label in samples], 0.2, seed=0)
    assert len(train) == 60 and len(held) == 240  # AID 20% protocol: 2 of 10 per class
