"""Property tests for the FAIR1M XML reader (:func:`read_fair1m_xml`), in the style of ``test_annotation_readers``.

- *structured*: an XML assembled from objects whose fate the test knows (valid 4- or closed 5-point rings, or one
  defect: 3 / 6 points, an unclosed 5-point ring, a non-number, NaN / inf / 1e400, a point that is not ``x,y``, an
  unknown or missing class name, a zero-area polygon). Oracle: exactly the valid objects are kept (class names with
  ``_``), every defect is counted once and warned with the file and its object number.
- *garbage*: random bytes, non-UTF-8, truncations, empty files: the reader returns, or raises
  :class:`DatasetFormatError` naming the file; nothing else.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from lsknet.data.dota import SkipReport
from lsknet.data.fair1m import FAIR1M_CLASSES, read_fair1m_xml
from lsknet.errors import DatasetFormatError
from tests.fuzz.test_annotation_readers import FUZZ, _read_collecting, rectangle

DEFECTS = ("three", "six", "unclosed", "word", "nan", "inf", "huge", "not_xy", "unknown", "no_name", "flat")
XML_NAMES = ("Passenger Ship", "Boeing737", "Small Car", "other-airplane")


def fair1m_object(kind: str, i: int, closed: bool = True) -> str:
    corners = rectangle(10.0 + i, 20.0, 30.0, 15.0)
    points = [f"{corners[j]},{corners[j + 1]}" for j in range(0, 8, 2)]
    if closed or kind == "unclosed":
        points.append(points[0] if kind != "unclosed" else "99,99")
    name = XML_NAMES[i % len(XML_NAMES)]
    if kind == "three":
        points = points[:3]
    elif kind == "six":
        points = points[:4] + ["1,1", "2,2"]
    elif kind in ("word", "nan", "inf", "huge", "not_xy"):
        points[1] = {"word": "ten,20", "nan": "nan,20", "inf": "40,-inf", "huge": "1e400,20", "not_xy": "40;20"}[kind]
    elif kind == "flat":
        points = ["5,5"] * 4
    elif kind == "unknown":
        name = "Space Ship"
    elif kind == "no_name":
        name = "  "
    body = "".join(f"<point>{p}</point>" for p in points)
    return (f"<object><coordinate>pixel</coordinate><type>rectangle</type><description>None</description>"
            f"<possibleresult><name>{name}</name></possibleresult><points>{body}</points></object>")


def fair1m_xml(objects: str) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?><annotation><source><filename>7.tif</filename>'
            f"<origin>GF2/GF3</origin></source><size><width>1000</width><height>1000</height></size>"
            f"<objects>{objects}</objects></annotation>")


@FUZZ
@given(st.lists(st.one_of(st.booleans().map(lambda closed: ("ok", closed)), st.sampled_from(DEFECTS).map(
    lambda d: (d, True))), max_size=14))
def test_fair1m_keeps_valid_objects_and_counts_every_defect(tmp_path, objects):
    path = tmp_path / "7.xml"
    path.write_text(fair1m_xml("".join(fair1m_object(kind, i, closed) for i, (kind, closed) in enumerate(objects))))
    report = SkipReport(max_warnings=1000)
    ann, messages = _read_collecting(read_fair1m_xml, path, report=report)
    ok = [i for i, (kind, _) in enumerate(objects) if kind == "ok"]
    assert len(ann) == len(ok)
    assert ann.names == ["_".join(XML_NAMES[i % len(XML_NAMES)].split()) for i in ok]
    assert report.total == len(objects) - len(ok)
    for i, (kind, _) in enumerate(objects):
        if kind != "ok":
            assert any(re.match(rf"{re.escape(str(path))}:object[ :]{i + 1}: ", m) for m in messages), (kind, messages)
    assert ann.meta["image"] == "7.tif"


VALID = fair1m_xml(fair1m_object("ok", 0) + fair1m_object("ok", 1, closed=False)).encode()


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.integers(0, len(VALID)).map(lambda n: VALID[:n]),
                 st.binary(min_size=1, max_size=40).map(lambda b: VALID[:200] + b + VALID[200:]),
                 st.text(max_size=20).map(lambda t: VALID.replace(b"Boeing737", t.encode("utf-16"))),
                 st.just(VALID.replace(b"Boeing737", "Boéing".encode("latin-1")))))
def test_fair1m_garbage_truncations_and_non_utf8_never_crash(tmp_path, data):
    path = tmp_path / "a.xml"
    path.write_bytes(data)
    report = SkipReport(max_warnings=0)
    try:
        ann, _ = _read_collecting(read_fair1m_xml, path, report=report)
    except DatasetFormatError as err:
        assert str(path) in str(err)
        return
    assert len(ann) + report.total == data.count(b"<object>")  # every object kept or counted
    assert set(ann.names) <= set(FAIR1M_CLASSES)
