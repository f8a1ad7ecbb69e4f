"""``lsknet data synth`` -> ``dota split`` -> patch detections -> ``dota merge`` -> ``dota eval``, end to end."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lsknet.cli.main import main
from lsknet.data.dota import Task1Detections, read_labeltxt, read_task1_dir, write_task1_dir
from lsknet.data.merge import merge_detections
from lsknet.data.synthetic import SYNTH_CLASSES

CLASSES = ",".join(SYNTH_CLASSES)


def test_end_to_end(tmp_path: Path, capsys):
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "syn"),
                "--images",
                "3",
                "--size",
                "400",
                "--seed",
                "3",
                "--truncated",
                "0",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_objects"] > 10
    assert (
        main(
            [
                "dota",
                "split",
                "--src",
                str(tmp_path / "syn"),
                "--dst",
                str(tmp_path / "split"),
                "--sizes",
                "256",
                "--gaps",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["patches"] == 12
    # detections on patches = the patch ground truth (whole objects score higher than truncated pieces)
    per_class: dict[str, list] = {c: [] for c in SYNTH_CLASSES}
    for p in sorted((tmp_path / "split" / "labelTxt").glob("*.txt")):
        ann = read_labeltxt(p)
        for quad, name, diff in zip(ann.polys, ann.names, ann.difficult):
            per_class[name].append((p.stem, 0.5 if diff == 2 else 0.9, quad))
    dets = {
        c: Task1Detections(
            np.array([r[0] for r in rows], dtype=object), np.array([r[1] for r in rows]), np.stack([r[2] for r in rows])
        )
        for c, rows in per_class.items()
        if rows
    }
    write_task1_dir(tmp_path / "patch_dets", dets)
    zip_path = tmp_path / "submit.zip"
    assert (
        main(
            [
                "dota",
                "merge",
                "--src",
                str(tmp_path / "patch_dets"),
                "--dst",
                str(tmp_path / "merged"),
                "--classes",
                CLASSES,
                "--zip",
                str(zip_path),
            ]
        )
        == 0
    )
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == sorted(f"Task1_{c}.txt" for c in SYNTH_CLASSES)
    merged = read_task1_dir(tmp_path / "merged", SYNTH_CLASSES)
    assert all(not any("__" in str(i) for i in d.image_ids) for d in merged.values())  # source image ids
    out = tmp_path / "eval" / "res.json"
    capsys.readouterr()
    rc = main(
        [
            "dota",
            "eval",
            "--det",
            str(tmp_path / "merged"),
            "--gt",
            str(tmp_path / "syn" / "labelTxt"),
            "--classes",
            CLASSES,
            "--out",
            str(out),
            "--curves",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["mAP"] > 0.9 and set(res["per_class"]) == set(SYNTH_CLASSES)
    assert out.with_suffix(".csv").is_file() and list((tmp_path / "eval" / "res_pr").glob("pr_*.png"))
    assert "mAP" in capsys.readouterr().out
    # area metric + mmrotate mode run too
    assert (
        main(
            [
                "dota",
                "eval",
                "--det",
                str(tmp_path / "merged"),
                "--gt",
                str(tmp_path / "syn" / "labelTxt"),
                "--classes",
                CLASSES,
                "--metric",
                "area",
                "--mode",
                "mmrotate",
                "--no-coco",
            ]
        )
        == 0
    )


def test_user_errors_exit_2(tmp_path: Path, capsys):
    assert main(["dota", "eval", "--det", str(tmp_path / "none"), "--gt", str(tmp_path)]) == 2
    assert "found" in capsys.readouterr().err
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "a.txt").write_text("0 0 10 0 10 10 0 10 plane 0\n1 2 3 plane\n")
    (tmp_path / "det").mkdir()
    assert main(["dota", "eval", "--det", str(tmp_path / "det"), "--gt", str(tmp_path / "gt"), "--strict"]) == 2
    assert "a.txt:2" in capsys.readouterr().err
    assert main(["dota", "split", "--src", str(tmp_path / "nothing"), "--dst", str(tmp_path / "o")]) == 2


def test_merge_detections_library_function(tmp_path: Path):
    sq = np.array([[0.0, 0], [20, 0], [20, 10], [0, 10]])
    results = {
        "img__100__0___0": {
            "polys": torch.tensor(np.stack([sq + [50, 50], sq + [50, 50]])),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 1]),
        },
        # the same object seen from the next window (offset 40, 0) with a lower score -> suppressed
        "img__100__40___0": {
            "rboxes": torch.tensor([[20.0, 55, 20, 10, 0]]),
            "scores": torch.tensor([0.7]),
            "labels": torch.tensor([0]),
        },
        "other.png": {"polys": np.stack([sq]), "scores": np.array([0.5]), "labels": np.array([1])},
    }
    merged = merge_detections(results, ["a", "b"], iou_thr=0.1, out_dir=tmp_path / "out", zip_path=tmp_path / "s.zip")
    assert merged["a"].image_ids.tolist() == ["img"] and merged["a"].scores.tolist() == pytest.approx([0.9])
    np.testing.assert_allclose(merged["a"].polys[0], sq + [50, 50])
    assert sorted(merged["b"].image_ids.tolist()) == ["img", "other.png"]
    assert (tmp_path / "out" / "Task1_a.txt").read_text().startswith("img 0.900000 50 50 70 50 70 60 50 60")
    assert (tmp_path / "s.zip").is_file()
    with pytest.raises(Exception, match="label index"):
        merge_detections({"x": {"polys": np.stack([sq]), "scores": [1.0], "labels": [5]}}, ["a"])
