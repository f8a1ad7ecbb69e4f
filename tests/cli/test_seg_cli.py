"""``lsknet seg score|synth|tile`` through the CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lsknet.cli.main import main

GT = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)


def _write(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / name)


def test_seg_score_hand_computed(tmp_path, capsys):
    _write(tmp_path / "pred", "a.png", PRED)
    _write(tmp_path / "gt", "a.png", GT)
    # second image: perfect class-1 prediction of 4 pixels -> adds 4 to cm[1, 1]
    _write(tmp_path / "pred", "b.png", np.ones((2, 2), np.uint8))
    _write(tmp_path / "gt", "b.png", np.ones((2, 2), np.uint8))
    out = tmp_path / "score.json"
    code = main(
        [
            "seg",
            "score",
            "--pred",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "gt"),
            "--num-classes",
            "4",
            "--out",
            str(out),
            "--confusion",
        ]
    )
    assert code == 0
    res = json.loads(out.read_text())
    # cm rows gt: [1,1,0,0] [0,6,0,0] [0,0,1,0] [0,0,0,0]
    assert res["IoU"][:3] == pytest.approx([0.5, 6 / 7, 1.0])
    assert res["IoU"][3] is None and res["F1"][3] is None
    assert res["mIoU"] == pytest.approx((0.5 + 6 / 7 + 1) / 3)
    assert res["F1"][:3] == pytest.approx([2 / 3, 12 / 13, 1.0])
    assert res["mF1"] == pytest.approx((2 / 3 + 12 / 13 + 1) / 3)
    assert res["OA"] == pytest.approx(8 / 9)
    assert (tmp_path / "score_confusion.csv").exists() and (tmp_path / "score_confusion.png").exists()
    assert "mIoU" in capsys.readouterr().out
    # excluding class 2 by name: means over classes 0 and 1 only
    assert main(["seg", "score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "4",
                 "--class-names", "road,roof,clutter,sky", "--exclude", "clutter", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["excluded"] == ["clutter"] and res["mIoU"] == pytest.approx((0.5 + 6 / 7) / 2)
    assert main(["seg", "score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "4",
                 "--exclude", "water", "--out", str(out)]) == 2  # fmt: skip


def test_seg_score_reduce_zero_label(tmp_path):
    raw = np.where(GT == 255, 0, GT + 1).astype(np.uint8)  # 0 = boundary / no-data, k -> k+1
    _write(tmp_path / "pred", "x.png", PRED)
    _write(tmp_path / "gt", "x.png", raw)
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "seg",
                "score",
                "--pred",
                str(tmp_path / "pred"),
                "--gt",
                str(tmp_path / "gt"),
                "--num-classes",
                "3",
                "--reduce-zero-label",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["IoU"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert res["OA"] == pytest.approx(0.8)


def test_seg_score_bad_inputs(tmp_path, capsys):
    _write(tmp_path / "pred", "a.png", PRED)
    _write(tmp_path / "gt", "a.png", np.zeros((3, 3), np.uint8))
    args = [
        "seg",
        "score",
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--num-classes",
        "3",
        "--out",
        str(tmp_path / "o.json"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "size mismatch" in err and "pred/a.png" in err and "gt/a.png" in err

    _write(tmp_path / "gt", "a.png", np.full((2, 3), 9, np.uint8))
    assert main(args) == 2
    assert "out of range" in capsys.readouterr().err

    _write(tmp_path / "gt", "a.png", GT)
    _write(tmp_path / "gt", "extra.png", GT)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "without prediction" in err and "extra" in err

    (tmp_path / "gt" / "extra.png").unlink()
    (tmp_path / "pred" / "a.png").write_bytes(b"not a png")
    assert main(args) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_seg_synth_and_tile(tmp_path, capsys):
    from lsknet.data.segmentation import ISPRS_PALETTE, tile_windows

    assert main(["seg", "synth", "--out", str(tmp_path / "s"), "--num", "2", "--size", "40", "--seed", "3"]) == 0
    masks = sorted((tmp_path / "s" / "ann_dir").glob("*.png"))
    assert len(masks) == 2
    # turn the index masks into ISPRS colour masks, then cut tiles back to index masks
    colour = tmp_path / "colour"
    colour.mkdir()
    for m in masks:
        Image.fromarray(np.array(ISPRS_PALETTE, np.uint8)[np.asarray(Image.open(m))]).save(colour / m.name)
    args = ["seg", "tile", "--images", str(tmp_path / "s" / "img_dir"), "--masks", str(colour), "--out",
            str(tmp_path / "t"), "--format", "isprs", "--size", "16", "--stride", "12"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["tiles"] == 2 * len(tile_windows(40, 40, 16, 12))
    tile = np.asarray(Image.open(tmp_path / "t" / "ann_dir" / "scene_0000_12_24.png"))
    np.testing.assert_array_equal(tile, np.asarray(Image.open(masks[0]))[12:28, 24:40])
    # a colour outside the palette is a one-line error (exit 2) naming the file
    bad = np.asarray(Image.open(colour / masks[0].name)).copy()
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(colour / masks[0].name)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "colours not in the palette" in err and "(1,2,3): 1 px" in err and masks[0].name in err


@pytest.mark.slow
def test_demo_segment_learns(tmp_path, capsys):
    code = main(["demo", "--task", "segment", "--out", str(tmp_path / "demo"), "--budget-minutes", "4"])
    assert code == 0
    res = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert res["test_mIoU"] > 3 * res["chance_mIoU_uniform"] and res["test_mIoU"] > 2 * res["chance_mIoU_majority"]
