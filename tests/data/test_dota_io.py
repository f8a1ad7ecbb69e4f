"""DOTA labelTxt reading/writing, class lists, bad-input handling."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from lsknet.data.dota import (
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTAAnnotation,
    SkipReport,
    get_classes,
    pair_images_and_labels,
    parse_labeltxt,
    read_labeltxt,
    write_labeltxt,
)
from lsknet.errors import DatasetFormatError, DataSkipWarning


def test_class_lists_match_published_order():
    assert len(DOTA_V1_CLASSES) == 15
    assert (
        DOTA_V1_CLASSES[0] == "plane" and DOTA_V1_CLASSES[9] == "storage-tank" and DOTA_V1_CLASSES[-1] == "helicopter"
    )
    assert get_classes("dota1.5")[-1] == "container-crane" and len(get_classes("dota1.5")) == 16
    assert DOTA_V2_CLASSES[-2:] == ("airport", "helipad") and len(get_classes("DOTA-v2.0")) == 18
    assert get_classes("a,b , c") == ("a", "b", "c")
    with pytest.raises(DatasetFormatError):
        get_classes("a,a")


def test_read_headers_difficult_and_optional_flag(tmp_path: Path):
    p = tmp_path / "P1.txt"
    p.write_text(
        "imagesource:GoogleEarth\ngsd:0.146\n10 10 20 10 20 20 10 20 plane 1\n\n1.5 2 30 2 30 12 1.5 12 small-vehicle\n"
    )
    ann = read_labeltxt(p)
    assert ann.meta == {"imagesource": "GoogleEarth", "gsd": "0.146"}
    assert ann.names == ["plane", "small-vehicle"]
    assert ann.difficult.tolist() == [1, 0]
    np.testing.assert_allclose(ann.polys[1], [[1.5, 2], [30, 2], [30, 12], [1.5, 12]])


def test_counter_clockwise_reordered_to_clockwise(tmp_path: Path):
    ann = parse_labeltxt(["0 0 0 10 10 10 10 0 ship 0"])  # counter-clockwise on screen (y down)
    np.testing.assert_allclose(ann.polys[0], [[0, 0], [10, 0], [10, 10], [0, 10]])


@pytest.mark.realdata
def test_real_dota_files_are_clockwise_and_complete(shared_data: Path):
    pytest.importorskip("shapely")
    from shapely.geometry import Polygon

    label_dir = shared_data / "dota_devkit_example" / "labelTxt"
    total = difficult = 0
    for path in sorted(label_dir.glob("*.txt")):
        raw = [line.split() for line in path.read_text().splitlines() if len(line.split()) >= 9]
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataSkipWarning)
            ann = read_labeltxt(path, classes=DOTA_V1_CLASSES)
        assert ann.meta.get("imagesource") in ("GoogleEarth", "GF") and "gsd" in ann.meta
        assert len(ann) == len(raw)
        for quad, fields in zip(ann.polys, raw):
            np.testing.assert_allclose(quad.reshape(-1), [float(v) for v in fields[:8]])  # order unchanged
            # y flipped to maths axes the picture looks the same as on screen, and must turn clockwise
            assert not Polygon(quad * [1, -1]).exterior.is_ccw
        total += len(ann)
        difficult += int(ann.difficult.sum())
    assert (total, difficult) == (984, 67)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("1 2 3 4 5 6 7 plane", "malformed line"),
        ("1 2 3 4 5 6 7 x plane 0", "non-numeric coordinate"),
        ("1 2 3 4 5 6 7 nan plane 0", "non-finite coordinate"),
        ("0 0 10 0 10 10 0 10 spaceship 0", "unknown class"),
        ("0 0 10 0 20 0 30 0 plane 0", "zero-area polygon"),
        ("0 0 10 10 10 0 0 20 plane 0", "self-intersecting polygon"),
        ("0 0 10 0 10 10 0 10 plane 7", "bad difficult flag"),
        ("500 500 510 500 510 510 500 510 plane 0", "polygon outside the image"),
    ],
)
def test_bad_lines_warn_with_file_line_and_count(line: str, reason: str):
    report = SkipReport()
    good = "0 0 10 0 10 10 0 10 plane 0"
    with pytest.warns(DataSkipWarning, match=rf"f\.txt:2: {reason}"):
        ann = parse_labeltxt([good, line], "f.txt", DOTA_V1_CLASSES, report, image_size=(100, 100))
    assert len(ann) == 1 and report.counts == {reason: 1}
    assert reason in report.summary()
    with pytest.raises(DatasetFormatError, match=r"f\.txt:2"):
        parse_labeltxt([good, line], "f.txt", DOTA_V1_CLASSES, SkipReport(strict=True), image_size=(100, 100))


def test_empty_file_is_image_without_objects(tmp_path: Path):
    p = tmp_path / "e.txt"
    p.write_text("")
    ann = read_labeltxt(p)
    assert len(ann) == 0 and ann.polys.shape == (0, 4, 2)
    with pytest.raises(DatasetFormatError, match="not found"):
        read_labeltxt(tmp_path / "missing.txt")


def test_write_read_round_trip_and_format(tmp_path: Path):
    ann = DOTAAnnotation(
        np.array([[[1, 2], [3.5, 2], [3.5, 4.25], [1, 4.25]]], dtype=np.float64),
        ["harbor"],
        np.array([2]),
        {"imagesource": "x", "gsd": "0.3"},
    )
    p = tmp_path / "out" / "a.txt"
    write_labeltxt(p, ann)
    assert p.read_text() == "imagesource:x\ngsd:0.3\n1 2 3.5 2 3.5 4.25 1 4.25 harbor 2\n"
    back = read_labeltxt(p)
    np.testing.assert_allclose(back.polys, ann.polys)
    assert back.names == ann.names and back.difficult.tolist() == [2] and back.meta == ann.meta


def test_pairing_images_and_labels(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labelTxt").mkdir()
    for stem in ("a", "b"):
        (tmp_path / "images" / f"{stem}.png").write_bytes(b"")
    (tmp_path / "labelTxt" / "a.txt").write_text("")
    (tmp_path / "labelTxt" / "c.txt").write_text("")
    report = SkipReport()
    with pytest.warns(DataSkipWarning):
        pairs = pair_images_and_labels(tmp_path, report)
    assert [p[0] for p in pairs] == ["a"]
    assert report.counts == {"label without image": 1, "image without label file": 1}
    with pytest.warns(DataSkipWarning, match="label without image"):
        pairs = pair_images_and_labels(tmp_path, SkipReport(), labels_required=False)
    assert [(p[0], p[2] is None) for p in pairs] == [("a", False), ("b", True)]
