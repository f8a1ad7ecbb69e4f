"""Property tests for the annotation readers: DOTA labelTxt, Task1, HRSC XML, DIOR-R XML, YOLO-OBB.

Two kinds of property:

- *structured*: a file is assembled from lines whose fate the test knows (a valid object, or one of the known
  defects: too few / too many tokens, a non-number, NaN/inf/1e400, a bad difficult flag, an unknown class, a
  zero-area polygon). Oracle: exactly the valid lines are kept, every defect is counted once and warned with
  ``file:line`` (nothing silently lost, nothing invented).
- *garbage*: random bytes, non-UTF-8 text, truncations of a valid file. The reader returns, or raises
  :class:`DatasetFormatError`; nothing else (no other exception type, no crash).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsknet.data.annotations import read_dior_xml, read_hrsc_xml, read_yolo_obb
from lsknet.data.dota import SkipReport, read_labeltxt, read_task1_dir
from lsknet.errors import DatasetFormatError

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLASSES = ("plane", "ship", "small-vehicle")


def rectangle(x: float, y: float, w: float, h: float) -> list[float]:
    """A clockwise (image coordinates) axis-aligned rectangle: 8 numbers."""
    return [x, y, x + w, y, x + w, y + h, x, y + h]


numbers = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=1.0, max_value=500.0)
valid_object = st.tuples(numbers, numbers, sizes, sizes, st.sampled_from(CLASSES), st.sampled_from(["", "0", "1", "2"]))
defects = st.sampled_from(
    ["few", "many", "word", "nan", "inf", "huge", "difficult", "difficult_huge", "unknown", "flat"]
)


def object_line(obj) -> str:
    x, y, w, h, name, diff = obj
    return " ".join(repr(v) for v in rectangle(x, y, w, h)) + f" {name}" + (f" {diff}" if diff else "")


def defect_line(kind: str) -> str:
    good = rectangle(10, 10, 20, 30)
    text = " ".join(str(v) for v in good)
    return {
        "few": "10 10 20 10 20 20 plane",
        "many": f"{text} plane 0 extra tokens",
        "word": f"10 ten {text[6:]} plane 0",
        "nan": f"nan {text[3:]} plane 0",
        "inf": f"{text} ".replace("10 ", "inf ", 1) + "plane 0",
        "huge": f"1e400 {text[3:]} ship",
        "difficult": f"{text} plane x",
        "difficult_huge": f"{text} plane 1e400",
        "unknown": f"{text} spaceship 0",
        "flat": "5 5 5 5 5 5 5 5 plane 0",
    }[kind]


def _read_collecting(read, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read(*args, **kwargs)
    return result, [str(w.message) for w in caught]


@FUZZ
@given(st.lists(st.one_of(valid_object.map(lambda o: ("ok", o)), defects.map(lambda d: ("bad", d))), max_size=25),
       st.booleans())
def test_labeltxt_keeps_valid_lines_and_counts_every_defect(tmp_path, lines, header):
    text_lines = ["imagesource:GoogleEarth", "gsd:0.5"] if header else []
    expected_bad_lines = []
    for kind, item in lines:
        text_lines.append(object_line(item) if kind == "ok" else defect_line(item))
        if kind == "bad":
            expected_bad_lines.append(len(text_lines))
    path = tmp_path / "P0001.txt"
    path.write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    report = SkipReport(max_warnings=1000)
    ann, messages = _read_collecting(read_labeltxt, path, CLASSES, report)
    assert len(ann) == sum(kind == "ok" for kind, _ in lines)
    assert report.total == len(expected_bad_lines)
    for lineno in expected_bad_lines:
        assert any(m.startswith(f"{path}:{lineno}:") for m in messages), (lineno, messages)
    assert all(math.isfinite(v) for v in ann.polys.reshape(-1))
    assert set(ann.names) <= set(CLASSES)


def _valid_labeltxt() -> bytes:
    lines = ["imagesource:GoogleEarth", "gsd:0.3"]
    lines += [object_line((10.0 * i, 5.0, 12.0, 7.0, CLASSES[i % 3], "0")) for i in range(6)]
    return ("\n".join(lines) + "\n").encode()


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.integers(0, len(_valid_labeltxt())).map(lambda n: _valid_labeltxt()[:n])))
def test_labeltxt_garbage_and_truncations_never_crash(tmp_path, data):
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    report = SkipReport(max_warnings=0)
    try:
        ann, _ = _read_collecting(read_labeltxt, path, CLASSES, report)
    except DatasetFormatError as err:
        assert str(path) in str(err)
        return
    nonblank = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    assert len(ann) + report.total + len(ann.meta) <= len(nonblank)


TASK1_DEFECTS = {
    "few": "P1 0.5 1 2 3",
    "word": "P1 high 1 1 2 1 2 2 1 2",
    "nan": "P1 nan 1 1 2 1 2 2 1 2",
    "inf": "P1 0.5 inf 1 2 1 2 2 1 2",
    "huge": "P1 0.5 1e999 1 2 1 2 2 1 2",
}


@FUZZ
@given(st.lists(st.one_of(
    st.tuples(st.text("abcP0123_-", min_size=1, max_size=12), st.floats(0, 1), numbers).map(lambda t: ("ok", t)),
    st.sampled_from(["few", "word", "nan", "inf", "huge"]).map(lambda d: ("bad", d)),
), max_size=20))
def test_task1_keeps_valid_lines_and_counts_every_defect(tmp_path, lines):
    text_lines, expected_bad = [], []
    for kind, item in lines:
        if kind == "ok":
            image_id, score, x = item
            text_lines.append(f"{image_id} {score!r} " + " ".join(repr(v) for v in rectangle(x, x, 4, 4)))
        else:
            text_lines.append(TASK1_DEFECTS[item])
            expected_bad.append(len(text_lines))
    (tmp_path / "Task1_plane.txt").write_text("\n".join(text_lines) + "\n")
    report = SkipReport(max_warnings=1000)
    dets, messages = _read_collecting(read_task1_dir, tmp_path, ["plane"], report)
    assert len(dets["plane"]) == sum(kind == "ok" for kind, _ in lines)
    assert report.total == len(expected_bad)
    for lineno in expected_bad:
        assert any(f"Task1_plane.txt:{lineno}:" in m for m in messages)


@FUZZ
@given(st.binary(max_size=300))
def test_task1_garbage_never_crashes(tmp_path, data):
    (tmp_path / "Task1_plane.txt").write_bytes(data)
    (tmp_path / "Task1_unknown.txt").write_bytes(b"")
    report = SkipReport(max_warnings=0)
    try:
        dets, _ = _read_collecting(read_task1_dir, tmp_path, ["plane"], report)
    except DatasetFormatError as err:
        assert "Task1_plane.txt" in str(err)
        return
    assert report.counts["detection file of unknown class"] == 1
    assert len(dets["plane"]) + report.total - 1 <= max(1, data.count(b"\n") + 1)


# --------------------------------------------------------------------------------------------------------------------
# XML (HRSC2016, DIOR-R)

hrsc_field = st.sampled_from(["ok", "missing", "word", "nan", "difficult_word", "difficult_inf"])


def hrsc_object(kind: str, i: int) -> str:
    values = {"mbox_cx": 100 + i, "mbox_cy": 80, "mbox_w": 40, "mbox_h": 12, "mbox_ang": 0.3}
    tags = "".join(f"<{k}>{v}</{k}>" for k, v in values.items())
    difficult = "<difficult>0</difficult>"
    if kind == "missing":
        tags = tags.replace("<mbox_h>12</mbox_h>", "")
    elif kind == "word":
        tags = tags.replace("<mbox_w>40</mbox_w>", "<mbox_w>forty</mbox_w>")
    elif kind == "nan":
        tags = tags.replace("<mbox_cx>", "<mbox_cx>nan").replace(f">nan{100 + i}<", ">nan<")
    elif kind == "difficult_word":
        difficult = "<difficult>hard</difficult>"
    elif kind == "difficult_inf":
        difficult = "<difficult>inf</difficult>"
    return f"<HRSC_Object><Class_ID>100000001</Class_ID>{tags}{difficult}</HRSC_Object>"


@FUZZ
@given(st.lists(hrsc_field, max_size=12))
def test_hrsc_xml_keeps_valid_objects_and_counts_bad_ones(tmp_path, kinds):
    objects = "".join(hrsc_object(kind, i) for i, kind in enumerate(kinds))
    path = tmp_path / "100000001.xml"
    path.write_text(f"<HRSC_Image><Img_SizeWidth>300</Img_SizeWidth><HRSC_Objects>{objects}</HRSC_Objects></HRSC_Image>")
    report = SkipReport(max_warnings=1000)
    ann, messages = _read_collecting(read_hrsc_xml, path, report=report)
    assert len(ann) == kinds.count("ok")
    assert report.total == len(kinds) - kinds.count("ok")
    for i, kind in enumerate(kinds):
        if kind != "ok":
            assert any(m.startswith(f"{path}:object {i + 1}:") for m in messages)


def dior_object(kind: str, i: int) -> str:
    corners = {"x_left_top": 10, "y_left_top": 10, "x_right_top": 50, "y_right_top": 10,
               "x_right_bottom": 50, "y_right_bottom": 30, "x_left_bottom": 10, "y_left_bottom": 30}
    if kind == "word":
        corners["x_right_top"] = "fifty"
    if kind == "nan":
        corners["y_left_top"] = "NaN"
    box = "<robndbox>" + "".join(f"<{k}>{v}</{k}>" for k, v in corners.items()) + "</robndbox>"
    box = "" if kind == "missing" else box
    name = "spaceship" if kind == "unknown" else "airplane"
    difficult = {"difficult_word": "hard", "difficult_inf": "inf"}.get(kind, "0")
    return f"<object><name>{name}</name><difficult>{difficult}</difficult>{box}</object>"


@FUZZ
@given(st.lists(st.sampled_from(["ok", "missing", "word", "nan", "unknown", "difficult_word", "difficult_inf"]),
                max_size=12))
def test_dior_xml_keeps_valid_objects_and_counts_bad_ones(tmp_path, kinds):
    path = tmp_path / "00001.xml"
    path.write_text("<annotation><size><width>800</width><height>800</height></size>"
                    + "".join(dior_object(k, i) for i, k in enumerate(kinds)) + "</annotation>")
    report = SkipReport(max_warnings=1000)
    ann, _ = _read_collecting(read_dior_xml, path, report=report)
    assert len(ann) == kinds.count("ok")
    assert report.total == len(kinds) - kinds.count("ok")


VALID_XML = (
    "<annotation><size><width>800</width><height>800</height></size>" + dior_object("ok", 0) + "</annotation>"
).encode()


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.integers(0, len(VALID_XML)).map(lambda n: VALID_XML[:n]),
                 st.binary(max_size=40).map(lambda b: VALID_XML[:60] + b + VALID_XML[60:])))
@pytest.mark.parametrize("reader", [read_hrsc_xml, read_dior_xml])
def test_xml_garbage_never_crashes(tmp_path, reader, data):
    path = tmp_path / "a.xml"
    path.write_bytes(data)
    try:
        _read_collecting(reader, path, report=SkipReport(max_warnings=0))
    except DatasetFormatError as err:
        assert str(path) in str(err)


# --------------------------------------------------------------------------------------------------------------------
# YOLO-OBB


@FUZZ
@given(st.lists(st.one_of(
    st.tuples(st.integers(0, 2), st.floats(0.05, 0.5), st.floats(0.05, 0.5)).map(lambda t: ("ok", t)),
    st.sampled_from(["few", "word", "index", "negative", "nan", "float_index"]).map(lambda d: ("bad", d)),
), max_size=20))
def test_yolo_obb_keeps_valid_lines_and_counts_every_defect(tmp_path, lines):
    text_lines, expected_bad = [], []
    for kind, item in lines:
        if kind == "ok":
            idx, x, y = item
            text_lines.append(f"{idx} " + " ".join(repr(v) for v in rectangle(x, y, 0.2, 0.1)))
        else:
            text_lines.append({"few": "0 0.1 0.1 0.2", "word": "0 a 0.1 0.2 0.1 0.2 0.2 0.1 0.2",
                               "index": "7 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2",
                               "negative": "-1 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2",
                               "nan": "1 nan 0.1 0.2 0.1 0.2 0.2 0.1 0.2",
                               "float_index": "1.5 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2"}[item])
            expected_bad.append(len(text_lines))
    path = tmp_path / "a.txt"
    path.write_text("\n".join(text_lines) + "\n")
    report = SkipReport(max_warnings=1000)
    ann, messages = _read_collecting(read_yolo_obb, path, (100, 200), CLASSES, report)
    assert len(ann) == sum(kind == "ok" for kind, _ in lines)
    assert report.total == len(expected_bad)
    for lineno in expected_bad:
        assert any(m.startswith(f"{path}:{lineno}:") for m in messages)


@FUZZ
@given(st.binary(max_size=300))
def test_yolo_obb_garbage_never_crashes(tmp_path, data):
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    try:
        _read_collecting(read_yolo_obb, path, (64, 64), CLASSES, SkipReport(max_warnings=0))
    except DatasetFormatError as err:
        assert str(path) in str(err)


def test_reader_errors_name_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("10 10 20 10 20 20 10 20 plané 0\n".encode("latin-1"))
    for read in (lambda: read_labeltxt(path), lambda: read_yolo_obb(path, (10, 10), CLASSES)):
        with pytest.raises(DatasetFormatError, match="latin1.txt"):
            read()
    assert Path(path).is_file()
