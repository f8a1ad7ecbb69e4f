"""HRSC2016 / DIOR-R XML and YOLO-OBB readers (real samples + crafted bad input)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lsknet.data.annotations import read_dior_xml, read_hrsc_xml, read_yolo_obb
from lsknet.data.dota import SkipReport, read_labeltxt
from lsknet.errors import DatasetFormatError, DataSkipWarning

MM = "mmrotate/tests_data_1.x"


@pytest.mark.realdata
def test_dior_r_sample(shared_data: Path):
    ann = read_dior_xml(shared_data / MM / "dior" / "Annotations" / "Oriented Bounding Boxes" / "00001.xml")
    assert ann.names == ["golffield"] and ann.difficult.tolist() == [0]
    np.testing.assert_allclose(ann.polys[0], [[133, 237], [684, 237], [684, 672], [133, 672]])
    assert ann.meta["width"] == "800" and ann.meta["image"] == "00001.jpg"


@pytest.mark.realdata
def test_hrsc_sample_geometry(shared_data: Path):
    ann = read_hrsc_xml(shared_data / MM / "hrsc" / "FullDataSet" / "Annotations" / "100000006.xml")
    assert ann.names == ["ship"] and len(ann) == 1
    quad = ann.polys[0]
    np.testing.assert_allclose(quad.mean(0), [341.2143, 443.3325], atol=1e-3)
    sides = sorted([np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[1])])
    np.testing.assert_allclose(sides, [178.2595, 778.4297], rtol=1e-6)
    # the bow (header_x, header_y) = (143, 776) lies near one end of the long axis: the angle sign is right
    short_mids = [
        (quad[i] + quad[(i + 1) % 4]) / 2 for i in range(4) if np.linalg.norm(quad[(i + 1) % 4] - quad[i]) < 200
    ]
    assert min(np.linalg.norm(m - [143, 776]) for m in short_mids) < 60
    assert ann.meta["width"] == "1172"


@pytest.mark.realdata
def test_yolo_obb_matches_pixel_labels(shared_data: Path):
    from lsknet.data.dota import DOTA_V1_CLASSES

    yolo_order = [
        "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
        "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
        "roundabout", "soccer-ball-field", "swimming-pool",
    ]  # fmt: skip
    assert set(yolo_order) == set(DOTA_V1_CLASSES)
    root = shared_data / "ultralytics_dota8"
    n = 0
    for label in sorted((root / "labels" / "train").glob("*.txt")):
        ann = read_yolo_obb(label, (1024, 1024), yolo_order)
        ref = read_labeltxt(root / "labelTxt_dota_derived" / "train" / label.name)
        assert ann.names == ref.names
        np.testing.assert_allclose(ann.polys, ref.polys, atol=0.01)
        n += len(ann)
    assert n > 10


def test_bad_xml_and_missing_fields(tmp_path: Path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(DatasetFormatError, match="bad.xml"):
        read_dior_xml(bad)
    with pytest.raises(DatasetFormatError, match="not found"):
        read_hrsc_xml(tmp_path / "none.xml")
    part = tmp_path / "part.xml"
    part.write_text(
        "<HRSC_Image><HRSC_Objects>"
        "<HRSC_Object><mbox_cx>10</mbox_cx><mbox_cy>10</mbox_cy><mbox_w>8</mbox_w><mbox_h>4</mbox_h>"
        "<mbox_ang>0.5</mbox_ang><difficult>1</difficult></HRSC_Object>"
        "<HRSC_Object><mbox_cx>x</mbox_cx></HRSC_Object>"
        "</HRSC_Objects></HRSC_Image>"
    )
    report = SkipReport()
    with pytest.warns(DataSkipWarning, match="part.xml:object 2"):
        ann = read_hrsc_xml(part, report=report)
    assert len(ann) == 1 and ann.difficult.tolist() == [1] and report.counts == {"bad HRSC object": 1}
    c, s = math.cos(0.5), math.sin(0.5)
    # the width axis turns clockwise on screen by theta: first corner = centre - w/2 * u - h/2 * v
    np.testing.assert_allclose(ann.polys[0].mean(0), [10, 10], atol=1e-9)
    long_edge = max((ann.polys[0][(i + 1) % 4] - ann.polys[0][i] for i in range(4)), key=np.linalg.norm)
    assert abs(abs(long_edge @ np.array([c, s])) - 8) < 1e-6


def test_yolo_bad_lines(tmp_path: Path):
    p = tmp_path / "y.txt"
    p.write_text("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n\n7 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n0 0.1 0.1\n")
    report = SkipReport()
    with pytest.warns(DataSkipWarning) as caught:
        ann = read_yolo_obb(p, (100, 200), ["a", "b"], report=report)
    assert [str(w.message).split(": ")[0].endswith(f"y.txt:{n}") for w, n in zip(caught, (3, 4))] == [True, True]
    assert len(ann) == 1 and report.counts == {"unknown class": 1, "malformed line": 1}
    np.testing.assert_allclose(ann.polys[0], [[20, 10], [40, 10], [40, 20], [20, 20]])
