"""Synthetic DOTA scenes: real format, determinism, knobs, and that the drawn pixels match the labels."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lsknet.data.dota import read_labeltxt
from lsknet.data.synthetic import SYNTH_ALL_CLASSES, SYNTH_CLASSES, generate_dota_scenes


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_format_and_determinism(tmp_path: Path):
    s1 = generate_dota_scenes(tmp_path / "a", num_images=3, size=256, seed=5)
    generate_dota_scenes(tmp_path / "b", num_images=3, size=256, seed=5)
    generate_dota_scenes(tmp_path / "c", num_images=3, size=256, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    # scene i does not depend on how many scenes are generated
    generate_dota_scenes(tmp_path / "d", num_images=1, size=256, seed=5)
    assert (tmp_path / "d/images/S5_00000.png").read_bytes() == (tmp_path / "a/images/S5_00000.png").read_bytes()
    assert len(s1["image_ids"]) == 3
    for image_id in s1["image_ids"]:
        img = Image.open(tmp_path / "a" / "images" / f"{image_id}.png")
        assert img.size == (256, 256) and img.mode == "RGB"
        text = (tmp_path / "a" / "labelTxt" / f"{image_id}.txt").read_text().splitlines()
        assert text[0] == "imagesource:lsknet-synthetic" and text[1].startswith("gsd:")
        ann = read_labeltxt(tmp_path / "a" / "labelTxt" / f"{image_id}.txt", classes=SYNTH_CLASSES)
        assert len(ann) == len(text) - 2  # no line skipped, all classes known
        x, y = ann.polys[..., 0], ann.polys[..., 1]
        signed = 0.5 * np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1)
        assert (signed > 0).all()  # clockwise on screen


def test_knobs_classes_difficult_truncation_scale(tmp_path: Path):
    s = generate_dota_scenes(
        tmp_path / "k",
        num_images=4,
        size=320,
        seed=1,
        classes=["plane", "storage-tank"],
        objects_per_image=(6, 6),
        difficult_fraction=0.0,
        truncated_fraction=0.0,
        object_scale=(1.5, 1.5),
    )
    assert set(s["per_class"]) == {"plane", "storage-tank"} and s["num_difficult"] == 0
    for image_id in s["image_ids"]:
        ann = read_labeltxt(tmp_path / "k" / "labelTxt" / f"{image_id}.txt")
        assert set(ann.names) <= {"plane", "storage-tank"}
        assert (ann.polys >= -1e-6).all() and (ann.polys <= 320 + 1e-6).all()  # nothing cut by the border
        for quad, name in zip(ann.polys, ann.names):
            side = np.linalg.norm(quad[1] - quad[0])
            if name == "storage-tank":  # axis-aligned square, 18..44 px x 1.5
                assert 27 - 1e-6 <= side <= 66 + 1e-6
                assert abs(quad[1, 1] - quad[0, 1]) < 1e-6
    s2 = generate_dota_scenes(
        tmp_path / "t", num_images=6, size=256, seed=2, truncated_fraction=1.0, difficult_fraction=1.0
    )
    assert s2["num_difficult"] == s2["num_objects"]
    cut = 0
    for image_id in s2["image_ids"]:
        ann = read_labeltxt(tmp_path / "t" / "labelTxt" / f"{image_id}.txt")
        cut += int(((ann.polys < 0) | (ann.polys > 256)).any(axis=(1, 2)).sum())
    assert cut > 0
    with pytest.raises(ValueError):
        generate_dota_scenes(tmp_path / "x", num_images=1, classes=["bridge"])


def test_default_classes_differ_in_scale_and_are_drawn_where_labelled(tmp_path: Path):
    s = generate_dota_scenes(tmp_path / "s", num_images=8, size=384, seed=3, noise=0.0, difficult_fraction=0.0)
    assert set(s["per_class"]) == set(SYNTH_CLASSES) and all(n > 0 for n in s["per_class"].values())
    areas: dict[str, list[float]] = {c: [] for c in SYNTH_CLASSES}
    inside_diff, outside_diff = [], []
    for image_id in s["image_ids"]:
        pixels = np.asarray(Image.open(tmp_path / "s" / "images" / f"{image_id}.png"), dtype=np.float64)
        ann = read_labeltxt(tmp_path / "s" / "labelTxt" / f"{image_id}.txt")
        for quad, name in zip(ann.polys, ann.names):
            areas[name].append(np.linalg.norm(quad[1] - quad[0]) * np.linalg.norm(quad[2] - quad[1]))
        # object pixels differ from the ground around them: compare each box with a ring just outside it
        for quad in ann.polys:
            if (quad < 4).any() or (quad > 380).any():
                continue
            centre = quad.mean(0)
            mask_in = Image.new("L", (384, 384), 0)
            ImageDraw.Draw(mask_in).polygon([tuple(p) for p in (centre + 0.6 * (quad - centre))], fill=1)
            mask_ring = Image.new("L", (384, 384), 0)
            ImageDraw.Draw(mask_ring).polygon([tuple(p) for p in (centre + 1.6 * (quad - centre))], fill=1)
            ImageDraw.Draw(mask_ring).polygon([tuple(p) for p in (centre + 1.1 * (quad - centre))], fill=0)
            m_in, m_ring = np.asarray(mask_in, bool), np.asarray(mask_ring, bool)
            if m_in.sum() < 4:
                continue
            inside_diff.append(np.abs(pixels[m_in].mean(0) - pixels[m_ring].mean(0)).sum())
            # a control: the same ring statistics at a shifted, random place usually differ less
            outside_diff.append(np.abs(pixels[np.roll(m_in, 97, axis=(0, 1))].mean(0) - pixels[m_ring].mean(0)).sum())
    med = {c: float(np.median(v)) for c, v in areas.items()}
    assert med["small-vehicle"] < med["large-vehicle"] < med["plane"]
    assert med["small-vehicle"] < med["storage-tank"]
    assert np.median(inside_diff) > 2 * np.median(outside_diff)


def test_all_classes_drawable(tmp_path: Path):
    s = generate_dota_scenes(tmp_path / "all", num_images=2, size=256, seed=0, classes=SYNTH_ALL_CLASSES)
    assert s["num_objects"] > 0 and math.isfinite(s["num_objects"])
