"""Property tests for the image-side readers: segmentation masks and class-folder trees for scene classification.

- *masks* (:func:`read_mask` + :meth:`MaskCoding.decode`): random bytes, truncated PNGs, every PIL mode a mask
  comes in (palette, RGB, RGBA, grey, grey+alpha, 1-bit, 16-bit, 32-bit), colours outside the palette and index
  values out of range. Oracle: the result is ``(H, W)`` uint8 holding only class indices or ``ignore_index``,
  exactly the pixels with an unknown colour become ``ignore_index`` (``unknown="ignore"``, with a warning naming
  the file), or a :class:`DatasetFormatError` naming the file; nothing else escapes.
- *class folders* (:func:`scan_scene_folder`): class folders holding valid images, truncated / random-byte files
  with image extensions, non-image files, hidden files, odd names (dots, spaces, non-ASCII). Oracle: every valid
  image is kept under its class, every unreadable image file is counted in the summary and warned with its path,
  other files are ignored, and a class folder left without images is a :class:`DatasetFormatError` naming it.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from lsknet.data.scene import scan_scene_folder
from lsknet.data.segmentation import SegmentationDataset, mask_coding, read_mask
from lsknet.errors import DatasetFormatError, DataSkipWarning
from tests.fuzz.test_annotation_readers import FUZZ, _read_collecting

PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 0))


def png_bytes(array: np.ndarray, mode: str | None = None, palette: bool = False) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    if palette:
        image = Image.fromarray(array.astype(np.uint8), mode="L").convert("P")
        image.putpalette([v for colour in PALETTE for v in colour] + [0] * (768 - 3 * len(PALETTE)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_mask(path, coding):
    """read_mask + decode, warnings collected; the DatasetFormatError raised must name the file."""
    try:
        return _read_collecting(lambda: coding.decode(read_mask(path), path))
    except DatasetFormatError as err:
        assert str(path) in str(err)
        return None, []


def _check_labels(labels, shape, num_classes, ignore=255):
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert set(np.unique(labels).tolist()) <= set(range(num_classes)) | {ignore}


side = st.integers(1, 12)


@FUZZ
@given(st.tuples(side, side).flatmap(lambda hw: st.tuples(
    st.just(hw), st.lists(st.sampled_from(list(PALETTE) + [(1, 2, 3), (0, 0, 0)]), min_size=hw[0] * hw[1],
                          max_size=hw[0] * hw[1]))), st.sampled_from(["error", "ignore"]), st.booleans())
def test_rgb_mask_unknown_colours_are_ignored_exactly_or_an_error(tmp_path, shaped, unknown, rgba):
    (h, w), colours = shaped
    rgb = np.asarray(colours, dtype=np.uint8).reshape(h, w, 3)
    path = tmp_path / "m.png"
    array = np.concatenate([rgb, np.full((h, w, 1), 200, np.uint8)], axis=2) if rgba else rgb
    path.write_bytes(png_bytes(array))
    coding = mask_coding("folder", palette=PALETTE, unknown_colors=unknown)
    known = np.zeros((h, w), bool)
    expected = np.full((h, w), 255, np.uint8)
    for i, colour in enumerate(PALETTE):
        hit = (rgb == colour).all(axis=2)
        known |= hit
        expected[hit] = i
    labels, messages = _decode_mask(path, coding)
    if labels is None:
        assert unknown == "error" and not known.all()
        return
    _check_labels(labels, (h, w), len(PALETTE))
    np.testing.assert_array_equal(labels, expected)
    assert any(str(path) in m for m in messages) == (not known.all())


@FUZZ
@given(st.tuples(side, side).flatmap(lambda hw: st.lists(st.integers(0, 65535), min_size=hw[0] * hw[1],
                                                          max_size=hw[0] * hw[1]).map(lambda v: (hw, v))),
       st.sampled_from(["error", "ignore"]), st.booleans(), st.booleans())
@pytest.mark.parametrize("mode", ["L", "I;16", "I", "P", "LA", "1", "RGB", "RGBA", "CMYK", "F"])
def test_index_masks_in_every_mode_decode_to_classes_or_a_clear_error(tmp_path, mode, shaped, unknown, reduce_zero,
                                                                     with_palette):
    (h, w), values = shaped
    values = np.asarray(values, dtype=np.int64).reshape(h, w)
    if mode not in ("I;16", "I", "F"):
        values = values % 256
    if mode == "F":
        values = values.astype(np.float64)
        values[0, 0] += 0.5  # a non-integer class index: an error, not silently truncated
    if mode == "I;16":
        image = Image.fromarray(values.astype(np.uint16))
    elif mode in ("I", "F"):
        image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
    else:
        image = Image.fromarray(values.astype(np.uint8)).convert(mode)
    path = tmp_path / ("m.tif" if mode in ("I", "F", "CMYK") else "m.png")  # PNG stores none of these
    image.save(path)
    palette = PALETTE + ((1, 1, 1), (2, 2, 2)) if with_palette else None
    coding = mask_coding("folder", 5, palette=palette, reduce_zero_label=reduce_zero, unknown_colors=unknown)
    labels, messages = _decode_mask(path, coding)
    if mode == "F":
        assert labels is None
    if labels is None:
        return
    _check_labels(labels, (h, w), 5)
    if mode in ("L", "P", "LA", "I;16", "I") and not reduce_zero:  # one channel of indices (alpha dropped)
        np.testing.assert_array_equal(labels, np.where((values < 5) | (values == 255), values, 255))


def _noise_png(seed: int = 0, size: int = 16) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.integers(0, len(_noise_png())).map(lambda n: _noise_png()[:n]),
                 st.binary(min_size=1, max_size=30).map(lambda b: _noise_png()[:80] + b + _noise_png()[80:])),
       st.sampled_from([".png", ".tif", ".jpg"]))
def test_mask_garbage_and_truncations_never_crash(tmp_path, data, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(data)
    labels, _ = _decode_mask(path, mask_coding("folder", 3, unknown_colors="ignore"))
    if labels is not None:
        assert labels.dtype == np.uint8 and labels.ndim == 2


@FUZZ
@given(side, side, side, side)
def test_mask_size_differing_from_the_image_is_an_error_naming_both(tmp_path, h, w, mh, mw):
    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    image.write_bytes(png_bytes(np.zeros((h, w, 3), np.uint8)))
    mask.write_bytes(png_bytes(np.zeros((mh, mw), np.uint8)))
    coding = mask_coding("folder", 2)
    if (h, w) == (mh, mw):
        assert SegmentationDataset([(image, mask)], coding).load(0)[1].shape == (h, w)
        return
    with pytest.raises(DatasetFormatError) as err:
        SegmentationDataset([(image, mask)], coding).load(0)
    assert str(image) in str(err.value) and str(mask) in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# class-folder trees

FILE_KINDS = ("png", "png", "jpg", "truncated", "garbage", "empty", "text", "hidden")
NAMES = ("a", "b.c.d", "with space", "ünïcödé", "x..y", "-dash", "UPPER", "多")


def _valid_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 5, 3), 90, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), st.lists(st.sampled_from(FILE_KINDS), max_size=5), min_size=1,
                       max_size=4), st.binary(max_size=64))
def test_scene_folder_keeps_valid_images_and_counts_unreadable_ones(tmp_path, tree, garbage):
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by all examples
    (root / "README.txt").write_text("top-level files are not classes")
    expected_kept, expected_bad, empty_classes = {}, set(), []
    for name, kinds in tree.items():
        folder = root / name
        folder.mkdir()
        kept = 0
        for i, kind in enumerate(kinds):
            stem = f"{i}.{name}"
            path = {"png": folder / f"{stem}.png", "jpg": folder / f"{stem}.JPG", "truncated": folder / f"{stem}.png",
                    "garbage": folder / f"{stem}.jpg", "empty": folder / f"{stem}.tif", "text": folder / f"{stem}.csv",
                    "hidden": folder / f".{stem}.png"}[kind]
            data = {"png": _noise_png(i, 8), "jpg": _valid_jpeg(), "truncated": _noise_png(i)[:60],
                    "garbage": b"\xff\xd8" + garbage, "empty": b"", "text": b"a,b\n", "hidden": b"junk"}[kind]
            path.write_bytes(data)
            if kind in ("png", "jpg"):
                kept += 1
            elif kind in ("truncated", "garbage", "empty"):
                expected_bad.add(str(path))
        expected_kept[name] = kept
        if kept == 0:
            empty_classes.append(folder)
    try:
        (samples, summary), messages = _read_collecting(scan_scene_folder, root)
    except DatasetFormatError as err:
        assert empty_classes and str(min(empty_classes)) in str(err)  # classes are scanned sorted
        return
    assert not empty_classes
    classes = sorted(tree)
    assert summary.classes == classes and summary.counts == expected_kept
    assert [classes[label] for _, label in samples] == [p.parent.name for p, _ in samples]
    assert {path for path, _ in summary.skipped} == expected_bad
    for path in expected_bad:
        assert any(path in m for m in messages)
    with pytest.raises(DatasetFormatError):
        scan_scene_folder(root, strict=True) if expected_bad else scan_scene_folder(tmp_path / "missing")


def test_scene_folder_without_classes_and_warning_type(tmp_path):
    (tmp_path / "only_file.png").write_bytes(_noise_png())
    with pytest.raises(DatasetFormatError, match="no class sub-folders"):
        scan_scene_folder(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "c" / "good.png").write_bytes(_noise_png())
    with pytest.warns(DataSkipWarning, match="bad.png"):
        samples, summary = scan_scene_folder(tmp_path)
    assert len(samples) == 1 and len(summary.skipped) == 1
