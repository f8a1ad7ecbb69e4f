"""FAIR1M-v1.0: fake files written here in the real XML layout (never real data) -> reader, split to DOTA-format
patches, merge of patch detections into the per-image XML submission, and the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsknet.cli.main import main
from lsknet.data.dota import SkipReport, Task1Detections, get_classes, read_labeltxt, write_task1_dir
from lsknet.data.fair1m import FAIR1M_CLASSES, read_fair1m_xml, write_fair1m_submission
from lsknet.data.split import split_dataset
from lsknet.errors import DatasetFormatError

OBJECT = """
        <object>
            <coordinate>pixel</coordinate>
            <type>rectangle</type>
            <description>None</description>
            <possibleresult>
                <name>{name}</name>
            </possibleresult>
            <points>
{points}
            </points>
        </object>"""


def fake_fair1m_xml(filename: str, objects: list[tuple[str, list[tuple[float, float]]]], size=(600, 500)) -> str:
    """A FAIR1M label file as the dataset ships it (points 'x,y', the first repeated as the 5th)."""
    body = "".join(
        OBJECT.format(name=name, points="\n".join(f"                <point>{x:.6f},{y:.6f}</point>" for x, y in pts))
        for name, pts in objects
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<annotation>
    <source>
        <filename>{filename}</filename>
        <origin>GF2/GF3</origin>
    </source>
    <research>
        <version>1.0</version>
        <provider>FAIR1M</provider>
        <author>Cyber</author>
        <pluginname>FAIR1M</pluginname>
        <pluginclass>object detection</pluginclass>
        <time>2021-03</time>
    </research>
    <size>
        <width>{size[0]}</width>
        <height>{size[1]}</height>
        <depth>3</depth>
    </size>
    <objects>{body}
    </objects>
</annotation>
"""


def ring(x0, y0, x1, y1):
    """Clockwise on screen, closed (5 points) as in FAIR1M files."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def test_class_list_is_the_official_order():
    assert len(FAIR1M_CLASSES) == 37 == len(set(FAIR1M_CLASSES))
    assert FAIR1M_CLASSES[:3] == ("Boeing737", "Boeing777", "Boeing747")  # LSKNet FairDataset.CLASSES
    assert FAIR1M_CLASSES[9] == "ARJ21" and FAIR1M_CLASSES[11] == "Passenger_Ship" and FAIR1M_CLASSES[-1] == "Bridge"
    assert get_classes("fair1m") == FAIR1M_CLASSES and get_classes("FAIR1M") == FAIR1M_CLASSES


def test_reader_on_a_fake_file(tmp_path):
    objects = [
        ("Passenger Ship", ring(10, 20, 110, 60)),
        ("Small Car", ring(200.5, 300.25, 210.5, 320.25)[:4]),  # 4 points only: accepted
        ("other-airplane", ring(400, 100, 480, 180)),
        ("Spaceship", ring(1, 1, 30, 30)),  # unknown class: skipped and counted
        ("Bus", ring(5, 5, 9, 9)[:3]),  # 3 points: skipped and counted
    ]
    path = tmp_path / "7.xml"
    path.write_text(fake_fair1m_xml("7.tif", objects))
    report = SkipReport()
    with pytest.warns(Warning):
        ann = read_fair1m_xml(path, report=report)
    assert ann.names == ["Passenger_Ship", "Small_Car", "other-airplane"]
    np.testing.assert_allclose(ann.polys[0], [[10, 20], [110, 20], [110, 60], [10, 60]])
    np.testing.assert_allclose(ann.polys[1], [[200.5, 300.25], [210.5, 300.25], [210.5, 320.25], [200.5, 320.25]])
    assert ann.difficult.tolist() == [0, 0, 0] and report.total == 2
    assert ann.meta["image"] == "7.tif" and ann.meta["width"] == "600" and ann.meta["origin"] == "GF2/GF3"
    assert ann.labels(FAIR1M_CLASSES).tolist() == [11, 20, 10]
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><objects>")
    with pytest.raises(DatasetFormatError, match="bad.xml"):
        read_fair1m_xml(bad)


def _fake_dataset(root: Path, labels: bool = True) -> None:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (600, 500), (30, 60, 90)).save(root / "images" / "3.tif")
    Image.new("RGB", (300, 300), (90, 60, 30)).save(root / "images" / "4.tif")
    if labels:
        (root / "labelXml").mkdir()
        (root / "labelXml" / "3.xml").write_text(
            fake_fair1m_xml("3.tif", [("Dump Truck", ring(40, 50, 60, 90)), ("Tennis Court", ring(450, 380, 520, 420))])
        )
        (root / "labelXml" / "4.xml").write_text(fake_fair1m_xml("4.tif", [("Bridge", ring(100, 100, 200, 130))]))


def test_split_reads_fair1m_sources(tmp_path):
    _fake_dataset(tmp_path / "src")
    summary = split_dataset(tmp_path / "src", tmp_path / "dst", sizes=[400], gaps=[100], fmt="fair1m", progress=False)
    assert summary["images"] == 2 and summary["patches"] > 2
    # the 400 px windows of the 600 x 500 image start at x = 0, 200 and y = 0, 100 (step 300, last one shifted)
    first = read_labeltxt(tmp_path / "dst" / "labelTxt" / "3__400__0___0.txt", FAIR1M_CLASSES)
    assert first.names == ["Dump_Truck"]
    np.testing.assert_allclose(first.polys[0], [[40, 50], [60, 50], [60, 90], [40, 90]])
    last = read_labeltxt(tmp_path / "dst" / "labelTxt" / "3__400__200___100.txt", FAIR1M_CLASSES)
    assert last.names == ["Tennis_Court"]
    np.testing.assert_allclose(last.polys[0], [[250, 280], [320, 280], [320, 320], [250, 320]])
    assert (tmp_path / "dst" / "images" / "4__400__0___0.png").is_file()
    with pytest.raises(DatasetFormatError, match="format"):
        split_dataset(tmp_path / "src", tmp_path / "x", fmt="coco", progress=False)


def test_submission_writer_round_trip(tmp_path):
    dets = {name: Task1Detections() for name in FAIR1M_CLASSES}
    dets["Passenger_Ship"] = Task1Detections(np.array(["12", "12"], dtype=object), np.array([0.4, 0.9]),
                                             np.array([[[0, 0], [10, 0], [10, 5], [0, 5]],
                                                       [[20, 20], [40, 20], [40, 30], [20, 30]]], float))  # fmt: skip
    dets["Van"] = Task1Detections(np.array(["13"], dtype=object), np.array([0.75]),
                                  np.array([[[1.5, 2.5], [3.5, 2.5], [3.5, 6.5], [1.5, 6.5]]]))  # fmt: skip
    paths = write_fair1m_submission(tmp_path / "sub", dets, image_ids=["11", "12", "13"])
    assert [p.name for p in paths] == ["11.xml", "12.xml", "13.xml"]
    root = ET.parse(tmp_path / "sub" / "12.xml").getroot()
    assert root.findtext("source/filename") == "12.tif"
    objs = root.findall("objects/object")
    assert [o.findtext("possibleresult/name") for o in objs] == ["Passenger Ship", "Passenger Ship"]
    assert [float(o.findtext("possibleresult/probability")) for o in objs] == [0.9, 0.4]  # highest first
    points = [p.text for p in objs[0].findall("points/point")]
    assert len(points) == 5 and points[0] == points[4]
    assert [tuple(float(v) for v in p.split(",")) for p in points[:4]] == [(20, 20), (40, 20), (40, 30), (20, 30)]
    assert ET.parse(tmp_path / "sub" / "11.xml").getroot().findall("objects/object") == []  # no detections
    back = read_fair1m_xml(tmp_path / "sub" / "13.xml")  # the reader reads the submission layout too
    assert back.names == ["Van"]
    np.testing.assert_allclose(back.polys[0], dets["Van"].polys[0])


def test_cli_split_and_merge_to_a_submission(tmp_path, capsys):
    _fake_dataset(tmp_path / "test", labels=False)
    split = ["dota", "split", "--format", "fair1m", "--src", str(tmp_path / "test"), "--dst", str(tmp_path / "patches")]
    assert main([*split, "--sizes", "400", "--gaps", "100", "--no-labels", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["patches"] > 2
    # patch detections of one object seen in two overlapping windows -> one detection after the merge
    box = np.array([[[250, 150], [290, 150], [290, 170], [250, 170]]], float)
    patch_dets = {name: Task1Detections() for name in FAIR1M_CLASSES}
    patch_dets["Bus"] = Task1Detections(np.array(["3__400__0___0", "3__400__200___0"], dtype=object),
                                        np.array([0.8, 0.7]), np.concatenate([box, box - [200, 0]]))  # fmt: skip
    write_task1_dir(tmp_path / "task1", patch_dets)
    assert main(["dota", "merge", "--format", "fair1m", "--src", str(tmp_path / "task1"), "--dst",
                 str(tmp_path / "submission"), "--images", str(tmp_path / "test" / "images"), "--zip",
                 str(tmp_path / "test.zip")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "submission").iterdir()) == ["3.xml", "4.xml"]
    ann = read_fair1m_xml(tmp_path / "submission" / "3.xml")
    assert ann.names == ["Bus"]
    np.testing.assert_allclose(ann.polys[0], box[0])
    assert sorted(zipfile.ZipFile(tmp_path / "test.zip").namelist()) == ["3.xml", "4.xml"]
