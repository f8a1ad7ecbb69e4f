"""Segmentation data: label codings of the real formats, pairing, tiling, aligned augmentation, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.data.segmentation import (
    ISPRS_PALETTE,
    UAVID_PALETTE,
    SegmentationDataset,
    SegTransform,
    check_sizes,
    cut_tiles,
    find_pairs,
    mask_coding,
    read_mask,
    tile_windows,
)
from lsknet.data.synthetic_segmentation import render_scene, write_scene_set
from lsknet.errors import DatasetFormatError, DataSkipWarning

WHITE, BLUE, CYAN, GREEN, YELLOW, RED, BLACK = (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (
    255, 255, 0), (255, 0, 0), (0, 0, 0)  # fmt: skip


def _rgb(rows):
    return np.array(rows, dtype=np.uint8)


def test_isprs_colour_coding_by_hand():
    mask = _rgb([[WHITE, BLUE, CYAN, GREEN], [YELLOW, RED, BLACK, WHITE]])
    coding = mask_coding("isprs")
    np.testing.assert_array_equal(coding.decode(mask), [[0, 1, 2, 3], [4, 5, 255, 0]])
    assert coding.num_classes == 6 and coding.class_names[5] == "clutter"
    ignored = mask_coding("isprs", clutter="ignore")
    np.testing.assert_array_equal(ignored.decode(mask), [[0, 1, 2, 3], [4, 255, 255, 0]])
    assert ignored.num_classes == 5


def test_isprs_mmseg_index_coding():
    # mmseg converter coding: 0 boundary (ignored), 1..6 -> classes 0..5
    raw = np.array([[0, 1, 2], [3, 6, 5]], dtype=np.uint8)
    np.testing.assert_array_equal(mask_coding("isprs").decode(raw), [[255, 0, 1], [2, 5, 4]])


def test_unknown_colours_error_or_ignore():
    mask = _rgb([[WHITE, (1, 2, 3), (1, 2, 3)], [(9, 9, 9), BLUE, BLUE]])
    with pytest.raises(
        DatasetFormatError, match=r"m\.png: colours not in the palette: \(1,2,3\): 2 px, \(9,9,9\): 1 px"
    ):
        mask_coding("isprs").decode(mask, "m.png")
    with pytest.warns(DataSkipWarning, match="mapped to ignore"):
        out = mask_coding("isprs", unknown_colors="ignore").decode(mask, "m.png")
    np.testing.assert_array_equal(out, [[0, 255, 255], [255, 1, 1]])


def test_loveda_and_uavid_codings():
    loveda = mask_coding("loveda")
    np.testing.assert_array_equal(loveda.decode(np.array([[0, 1, 7], [2, 4, 6]])), [[255, 0, 6], [1, 3, 5]])
    with pytest.raises(DatasetFormatError, match=r"x\.png: label values out of range \[1, 8\): 8: 2 px"):
        loveda.decode(np.array([[8, 8, 1]]), "x.png")
    uavid = mask_coding("uavid")
    mask = np.array([UAVID_PALETTE[::-1]], dtype=np.uint8)
    np.testing.assert_array_equal(uavid.decode(mask), [[7, 6, 5, 4, 3, 2, 1, 0]])
    folder = mask_coding("folder", palette=[(10, 10, 10), (20, 20, 20)])
    np.testing.assert_array_equal(folder.decode(_rgb([[(20, 20, 20), (10, 10, 10)]])), [[1, 0]])
    plain = mask_coding("folder", num_classes=3)
    np.testing.assert_array_equal(plain.decode(np.array([[0, 2, 255]])), [[0, 2, 255]])
    with pytest.raises(DatasetFormatError, match="out of range"):
        plain.decode(np.array([[3]]))


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def test_pairing_with_suffixes_and_orphans(tmp_path):
    # Potsdam naming: top_potsdam_2_10_RGB.tif <-> top_potsdam_2_10_label.tif
    for name in ("top_potsdam_2_10", "top_potsdam_2_11", "top_potsdam_3_10"):
        _save(tmp_path / "img" / f"{name}_RGB.tif", np.zeros((4, 4, 3)))
    for name in ("top_potsdam_2_10", "top_potsdam_2_11", "top_potsdam_7_7"):
        _save(tmp_path / "lbl" / f"{name}_label.tif", np.zeros((4, 4, 3)))
    with pytest.warns(DataSkipWarning) as rec:
        pairs = find_pairs(tmp_path / "img", tmp_path / "lbl", image_suffix="_RGB", mask_suffix="_label")
    msg = str(rec[0].message)
    assert "1 image(s) without a mask" in msg and "top_potsdam_3_10_RGB.tif" in msg
    assert "1 mask(s) without an image" in msg and "top_potsdam_7_7_label.tif" in msg
    assert [(a.name, b.name) for a, b in pairs] == [
        ("top_potsdam_2_10_RGB.tif", "top_potsdam_2_10_label.tif"),
        ("top_potsdam_2_11_RGB.tif", "top_potsdam_2_11_label.tif"),
    ]
    with pytest.raises(DatasetFormatError, match="without a mask"):
        find_pairs(tmp_path / "img", tmp_path / "lbl", image_suffix="_RGB", mask_suffix="_label", strict=True)


def test_uavid_sequence_layout(tmp_path):
    for seq in ("seq1", "seq2"):
        _save(tmp_path / seq / "Images" / "000000.png", np.zeros((4, 4, 3)))
        _save(tmp_path / seq / "Labels" / "000000.png", np.zeros((4, 4, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = find_pairs(tmp_path, tmp_path, replace_parts={"Images": "Labels"})
    assert [(str(a.relative_to(tmp_path)), str(b.relative_to(tmp_path))) for a, b in pairs] == [
        ("seq1/Images/000000.png", "seq1/Labels/000000.png"),
        ("seq2/Images/000000.png", "seq2/Labels/000000.png"),
    ]


def test_size_mismatch_and_undecodable(tmp_path):
    _save(tmp_path / "img" / "a.png", np.zeros((4, 5, 3)))
    _save(tmp_path / "ann" / "a.png", np.zeros((4, 4)))
    pairs = find_pairs(tmp_path / "img", tmp_path / "ann")
    with pytest.raises(DatasetFormatError, match=r"img/a\.png is 5x4, mask .*ann/a\.png is 4x4"):
        check_sizes(pairs)
    with pytest.raises(DatasetFormatError, match="sizes differ"):
        SegmentationDataset(pairs, mask_coding("folder", num_classes=2))
    (tmp_path / "ann" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match=r"ann/a\.png: cannot decode"):
        read_mask(tmp_path / "ann" / "a.png")


def test_tile_windows_by_hand():
    assert tile_windows(10, 10, 4, 3) == [(y, x, 4, 4) for y in (0, 3, 6) for x in (0, 3, 6)]
    # 11 px: 0, 3, 6 then one window aligned to the border at 7
    assert [w[0] for w in tile_windows(11, 4, 4, 3)] == [0, 3, 6, 7]
    assert tile_windows(3, 5, 8, 4) == [(0, 0, 3, 5)]  # smaller than a tile: one partial window
    cover = np.zeros((37, 23), int)
    for y, x, h, w in tile_windows(37, 23, 8, 5):
        assert h == 8 and w == 8
        cover[y : y + h, x : x + w] += 1
    assert cover.min() >= 1


def test_cut_tiles_reassemble(tmp_path):
    image, mask = render_scene((40, 52), seed=3)
    palette = np.array(ISPRS_PALETTE, dtype=np.uint8)
    _save(tmp_path / "img" / "area1.tif", image)
    _save(tmp_path / "gt" / "area1.tif", palette[mask])
    pairs = find_pairs(tmp_path / "img", tmp_path / "gt")
    summary = cut_tiles(pairs, tmp_path / "out", mask_coding("isprs"), size=16, stride=12)
    assert summary["tiles"] == len(tile_windows(40, 52, 16, 12))
    rebuilt_img = np.zeros_like(image)
    rebuilt_mask = np.full_like(mask, 99)
    for y, x, h, w in tile_windows(40, 52, 16, 12):
        rebuilt_img[y : y + h, x : x + w] = np.asarray(Image.open(tmp_path / "out" / "img_dir" / f"area1_{y}_{x}.png"))
        rebuilt_mask[y : y + h, x : x + w] = np.asarray(Image.open(tmp_path / "out" / "ann_dir" / f"area1_{y}_{x}.png"))
    np.testing.assert_array_equal(rebuilt_img, image)
    np.testing.assert_array_equal(rebuilt_mask, mask)


def test_augmentations_keep_image_and_mask_aligned():
    torch.manual_seed(0)
    mask = torch.randint(0, 6, (20, 30))
    image = mask[None].float().repeat(3, 1, 1)  # the image *is* the mask
    t = SegTransform(crop_size=16, hflip=True, vflip=True, rot90=True)
    for _ in range(20):
        img, m = t(image, mask)
        assert img.shape == (3, 16, 16)
        torch.testing.assert_close(img[0], m.float())
    # crop larger than the image pads the mask with ignore and the image with 0
    img, m = SegTransform(crop_size=40)(image, mask)
    assert (m == 255).sum() == 40 * 40 - 20 * 30 and (img[0][m == 255] == 0).all()
    # exact x2 scale: nearest-neighbour mask equals np.repeat of the input
    img, m = SegTransform(scale_range=(2.0, 2.0))(image, mask)
    np.testing.assert_array_equal(m.numpy(), np.repeat(np.repeat(mask.numpy(), 2, 0), 2, 1))
    assert img.shape == (3, 40, 60)


def test_dataset_tiles_and_colour_masks(tmp_path):
    summary = write_scene_set(tmp_path, num=2, size=48, seed=1, color_masks=True)
    assert summary["images"] == 2
    pairs = find_pairs(tmp_path / "img_dir", tmp_path / "ann_dir")
    ds = SegmentationDataset(pairs, mask_coding("isprs"), tile_size=32, tile_stride=16)
    assert len(ds) == 2 * len(tile_windows(48, 48, 32, 16))
    rng = np.random.default_rng(1)
    _, first_mask = render_scene(48, rng)  # the generator's first scene, independently re-rendered
    sample = ds[1]  # window (0, 16)
    assert sample["name"] == "scene_0000_0_16"
    np.testing.assert_array_equal(sample["mask"].numpy(), first_mask[0:32, 16:48])
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32


def test_synthetic_scene_has_every_class():
    _, mask = render_scene(256, seed=0)
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4, 5}


@pytest.mark.realdata
def test_real_isprs_and_loveda_masks(shared_data):
    root = shared_data / "mmseg_pseudo"
    pots = find_pairs(root / "pseudo_potsdam_dataset" / "img_dir", root / "pseudo_potsdam_dataset" / "ann_dir")
    ds = SegmentationDataset(pots, mask_coding("isprs"))
    raw = np.asarray(Image.open(pots[0][1]))
    labels = ds[0]["mask"].numpy()
    # SOURCES.md coding: raw 0 = boundary -> ignore; raw k -> class k - 1
    assert ((raw == 0) == (labels == 255)).all()
    np.testing.assert_array_equal(labels[raw > 0], raw[raw > 0] - 1)
    assert ds[0]["image"].shape == (3, 512, 512)
    lov = find_pairs(root / "pseudo_loveda_dataset" / "img_dir", root / "pseudo_loveda_dataset" / "ann_dir")
    ds = SegmentationDataset(lov, mask_coding("loveda"), tile_size=512, tile_stride=512)
    assert len(ds) == 3 * 4
    m = ds[0]["mask"].numpy()
    assert set(np.unique(m)) <= set(range(7)) | {255}


def test_partial_tiles_partition_the_image():
    assert tile_windows(10, 7, 4, 4, partial=True) == [
        (0, 0, 4, 4), (0, 4, 4, 3), (4, 0, 4, 4), (4, 4, 4, 3), (8, 0, 2, 4), (8, 4, 2, 3)]  # fmt: skip
    count = np.zeros((37, 23), int)
    for y, x, h, w in tile_windows(37, 23, 8, 8, partial=True):
        count[y : y + h, x : x + w] += 1
    assert (count == 1).all()
