"""The one image decoder (lsknet.data.imageio): 16-bit grey and colour images give the same model input in every
training dataset, the split tool and the predictor, equal to an 8-bit stretch computed here from the raw values."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsknet.data.detection import DOTADetectionDataset
from lsknet.data.imageio import list_images, load_rgb, read_image, stretch_limits, to_uint8
from lsknet.data.scene import load_image as scene_load_image
from lsknet.data.segmentation import read_image as seg_read_image
from lsknet.data.split import split_image
from lsknet.errors import DatasetFormatError
from lsknet.inference.predictor import load_image as predictor_load_image


def _stretch_oracle(values: np.ndarray) -> np.ndarray:
    """The documented rule, re-derived: 1st..99th percentile of all values -> 0..255, clipped, rounded."""
    low, high = np.percentile(values.astype(np.float64).ravel(), [1.0, 99.0])
    return np.clip(np.round((values.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)


def _write_png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG (grey, RGB or RGBA) written byte by byte: Pillow cannot write 16-bit colour PNGs."""
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    data = array.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + data[i].tobytes() for i in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + b"".join(
        [chunk(b"IEND", b"")]
    ))


def _sensor_values(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """12-bit sensor data stored in 16 bits with a few saturated outliers (the stretch must ignore them)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(1400, 350, size=shape).clip(0, 4095).astype(np.uint16)
    values.reshape(-1)[::331] = 65535  # 0.3 % saturated
    return values


def _dota_folder(root: Path, image_file: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    target = root / "images" / image_file.name
    target.write_bytes(image_file.read_bytes())
    (root / "labelTxt" / f"{image_file.stem}.txt").write_text("2 2 10 2 10 8 2 8 plane 0\n")
    return target


def _training_and_predictor_inputs(tmp_path: Path, image_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = _dota_folder(tmp_path / "dota", image_file)
    dataset = DOTADetectionDataset(tmp_path / "dota", classes=["plane"])
    training = dataset[0]["image"] * 255.0  # the detection task feeds the model image * 255
    return training, predictor_load_image(path)


def test_16bit_grey_png_same_input_for_training_and_prediction(tmp_path):
    values = _sensor_values((24, 32))
    source = tmp_path / "grey16.png"
    Image.fromarray(values).save(source)  # Pillow writes mode I;16
    training, predicted = _training_and_predictor_inputs(tmp_path, source)
    expected = torch.from_numpy(np.repeat(_stretch_oracle(values)[None], 3, axis=0)).float()
    assert torch.equal(predicted, expected)
    assert torch.allclose(training, expected, atol=1e-3)  # float32 0..1 storage, scaled back
    assert int(expected.max()) == 255 and int((expected == 255).float().mean() * 100) < 5  # not clipped to white


def test_16bit_rgb_png_same_input_for_training_and_prediction(tmp_path):
    pytest.importorskip("rasterio")  # full-depth reading of 16-bit colour PNGs (Pillow keeps the high byte only)
    values = _sensor_values((20, 28, 3), seed=1)
    source = tmp_path / "rgb16.png"
    _write_png16(source, values)
    assert read_image(source).dtype == np.uint16
    training, predicted = _training_and_predictor_inputs(tmp_path, source)
    expected = torch.from_numpy(_stretch_oracle(values)).permute(2, 0, 1).float()
    assert torch.equal(predicted, expected)
    assert torch.allclose(training, expected, atol=1e-3)


def test_16bit_rgb_tiff_scene_segmentation_and_split_agree(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    values = _sensor_values((3, 40, 36), seed=2)
    source = tmp_path / "rgb16.tif"
    with rasterio.open(source, "w", driver="GTiff", width=36, height=40, count=3, dtype="uint16") as dst:
        dst.write(values)
    expected = _stretch_oracle(np.moveaxis(values, 0, -1))
    assert np.array_equal(load_rgb(source), expected)
    assert np.array_equal(scene_load_image(source), expected)  # classification
    assert np.array_equal(seg_read_image(source), expected)  # segmentation (all bands kept: 3 here)
    names = split_image(source, None, tmp_path / "split", sizes=(32,), gaps=(8,))
    first = np.asarray(Image.open(tmp_path / "split" / "images" / f"{names[0]}.png"))
    assert np.array_equal(first, expected[:32, :32])


def test_windowed_scaling_with_shared_limits_equals_whole_image():
    values = _sensor_values((64, 48, 3), seed=3)
    whole = to_uint8(values)
    limits = stretch_limits(values)
    assert np.array_equal(to_uint8(values[10:30, 5:40], limits=limits), whole[10:30, 5:40])


def test_range_rule_and_float_nan():
    values = np.array([[0, 257, 65535]], dtype=np.uint16)[..., None]
    assert to_uint8(values, "range").ravel().tolist() == [0, 1, 255]
    floats = np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32)[..., None]
    out = to_uint8(floats).ravel()
    low, high = np.percentile([0.0, 1.0, 2.0], [1, 99])
    assert out[1] == 0  # NaN -> the low limit
    assert out[3] == 255 and out[2] == round((1.0 - low) * 255 / (high - low))
    with pytest.raises(DatasetFormatError, match="high_bit"):
        to_uint8(values, "max")


def test_bands_are_one_based_and_checked(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    for c in range(4):
        rgba[..., c] = 10 * (c + 1)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert read_image(path, bands=(3, 2, 1))[0, 0].tolist() == [30, 20, 10]
    assert load_rgb(path)[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    with pytest.raises(DatasetFormatError, match=r"bands \[5\] out of range.*1\.\.4"):
        read_image(path, bands=(5,))


def test_list_images_files_folders_and_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/z.png", "a/b/y.TIF", "a/notes.txt", "a/.hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    single = tmp_path / "one.jpg"
    single.write_bytes(b"x")
    assert list_images([single, tmp_path / "a"]) == [single, tmp_path / "a/b/y.TIF", tmp_path / "a/z.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="empty: no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(DatasetFormatError, match="no such file"):
        list_images([tmp_path / "missing.png"])
    with pytest.raises(DatasetFormatError, match="not a readable image"):
        read_image(tmp_path / "a/z.png")
