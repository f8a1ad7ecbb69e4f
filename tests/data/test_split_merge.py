"""Split windows, object assignment and split -> merge round trips (generated scenes and real DOTA files)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsknet.data.dota import DOTAAnnotation, read_labeltxt, read_labeltxt_dir
from lsknet.data.merge import merge_annotations, merge_labeltxt_dir
from lsknet.data.split import (
    MS_PRESET,
    clip_to_window,
    compute_windows,
    parse_patch_name,
    patch_name,
    split_annotation,
    split_dataset,
)
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.errors import DatasetFormatError

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon, box  # noqa: E402


def test_windows_follow_the_official_rule():
    # 1111 px with 1024/200 -> step 824: starts 0 and 824, the last one shifted to 1111 - 1024 = 87
    w = compute_windows(1111, 1182)
    assert sorted(map(tuple, w.tolist())) == [
        (0, 0, 1024, 1024),
        (0, 158, 1024, 1182),
        (87, 0, 1111, 1024),
        (87, 158, 1111, 1182),
    ]
    # 3000 px: ceil((3000-1024)/824 + 1) = 4 starts 0, 824, 1648, 1976 (shifted)
    xs = sorted({int(x) for x in compute_windows(3000, 500, img_rate_thr=0.0)[:, 0]})
    assert xs == [0, 824, 1648, 1976]
    # small image: the only window is mostly outside (rate 0.38 < 0.6) but the best one is kept
    assert compute_windows(712, 557).tolist() == [[0, 0, 1024, 1024]]
    # windows with too little image inside are dropped
    two = compute_windows(1100, 300, sizes=(256, 1024), gaps=(0, 0), img_rate_thr=0.6)
    assert ((two[:, 2] - two[:, 0]) == 256).all() and len(two) == 10  # the 1024 windows hold < 60 % image
    assert sorted({int(x) for x in two[:, 0]}) == [0, 256, 512, 768, 844]
    # multi-scale preset: window sides 2048, 1024, 682 in source pixels
    sides = sorted({int(r[2] - r[0]) for r in compute_windows(4000, 4000, **MS_PRESET)})
    assert sides == [682, 1024, 2048]
    with pytest.raises(DatasetFormatError):
        compute_windows(100, 100, sizes=(100,), gaps=(100,))


def test_patch_names_round_trip():
    name = patch_name("P0706", (87, 824, 1111, 1848))
    assert name == "P0706__1024__87___824"
    assert parse_patch_name(name + ".png") == parse_patch_name(name)
    p = parse_patch_name("my__odd__name__512__0___1648")
    assert (p.image_id, p.side, p.x, p.y) == ("my__odd__name", 512, 0, 1648)
    with pytest.raises(DatasetFormatError):
        parse_patch_name("P0706")


def test_iof_assignment_and_truncation_against_shapely():
    rng = np.random.default_rng(0)
    polys = []
    for _ in range(60):
        c = rng.uniform(0, 300, 2)
        a = rng.uniform(0, np.pi)
        u = np.array([np.cos(a), np.sin(a)]) * rng.uniform(5, 30)
        v = np.array([-np.sin(a), np.cos(a)]) * rng.uniform(3, 15)
        polys.append(np.stack([c - u - v, c + u - v, c + u + v, c - u + v]))
    ann = DOTAAnnotation(np.stack(polys), ["x"] * 60, np.zeros(60, np.int64))
    windows = compute_windows(300, 300, sizes=(128,), gaps=(32,))
    parts = split_annotation(ann, windows, iof_thr=0.7, clip_truncated=False)
    for win, part in zip(windows, parts):
        wbox = box(*win)
        expect = [i for i, p in enumerate(polys) if Polygon(p).intersection(wbox).area / Polygon(p).area >= 0.7]
        assert len(part) == len(expect)
        got_full = part.difficult == 0
        exp_full = [Polygon(polys[i]).intersection(wbox).area / Polygon(polys[i]).area > 1 - 1e-9 for i in expect]
        assert got_full.tolist() == exp_full
        np.testing.assert_allclose(part.polys, np.stack([polys[i] for i in expect]).reshape(-1, 4, 2) - win[:2])


def test_clipped_rectangle_covers_exactly_the_visible_part():
    quad = np.array([[[-20.0, 10], [40, 10], [40, 30], [-20, 30]]])  # axis aligned, half outside x=0
    out = clip_to_window(quad, (0, 0, 100, 100))
    assert Polygon(out[0]).equals(box(0, 10, 40, 30))
    rot = np.array([[[10.0, 0], [30, 20], [20, 30], [0, 10]]])  # rotated rectangle cut by y = 5
    out = clip_to_window(rot, (-50, 5, 50, 50))
    p_out, p_in = Polygon(out[0]), Polygon(rot[0])
    visible = p_in.intersection(box(-50, 5, 50, 50))
    assert p_out.contains(visible.buffer(-1e-6)) and p_in.buffer(1e-6).contains(p_out)
    assert abs(p_out.area - visible.area) < 0.25 * p_in.area


def _round_trip(src: Path, dst: Path, **kw) -> tuple[dict, dict]:
    split_dataset(src, dst / "split", progress=False, **kw)
    merged = merge_labeltxt_dir(dst / "split" / "labelTxt", dst / "merged")
    return read_labeltxt_dir(src / "labelTxt"), merged


def _check_reproduced(orig: dict, merged: dict, images: Path, sizes, gaps, rates) -> int:
    """Every object that lies whole inside some window comes back with IoU > 0.99; returns how many."""
    checked = 0
    for image_id, ann in orig.items():
        got = merged.get(image_id, DOTAAnnotation())
        w, h = Image.open(images / f"{image_id}.png").size
        wins = compute_windows(w, h, sizes, gaps, rates)
        centres = got.polys.mean(1)
        for quad, name, diff in zip(ann.polys, ann.names, ann.difficult):
            p = Polygon(quad)
            if not any(box(*win).contains(p) for win in wins):
                continue
            close = np.linalg.norm(centres - quad.mean(0), axis=1) < 5  # shapely only for nearby objects
            near = [int(i) for i in np.nonzero(close)[0] if got.names[i] == name]
            ious = [p.intersection(Polygon(got.polys[i])).area / p.union(Polygon(got.polys[i])).area for i in near]
            assert ious and max(ious) > 0.99, (image_id, name, quad)
            assert got.difficult[near[int(np.argmax(ious))]] == diff
            checked += 1
    return checked


def test_round_trip_on_generated_scenes(tmp_path: Path):
    generate_dota_scenes(tmp_path / "src", num_images=3, size=600, seed=4, truncated_fraction=0.0)
    orig, merged = _round_trip(tmp_path / "src", tmp_path, sizes=(256,), gaps=(64,))
    n = _check_reproduced(orig, merged, tmp_path / "src/images", (256,), (64,), (1.0,))
    assert n >= 0.9 * sum(len(a) for a in orig.values())
    # the patches are pixel-exact crops of the source
    src = np.asarray(Image.open(tmp_path / "src/images/S4_00000.png"))
    patch = tmp_path / "split/images/S4_00000__256__192___344.png"
    assert patch.is_file()
    np.testing.assert_array_equal(np.asarray(Image.open(patch)), src[344 : 344 + 256, 192 : 192 + 256])
    # truncated pieces are marked 2 and lie inside their patch
    for p in (tmp_path / "split/labelTxt").glob("*.txt"):
        a = read_labeltxt(p)
        t = a.difficult == 2
        for quad in a.polys[t]:  # the visible rectangle: mostly inside its patch
            assert Polygon(quad).intersection(box(0, 0, 256, 256)).area >= 0.7 * Polygon(quad).area


def test_re_running_an_interrupted_split_is_safe(tmp_path: Path):
    generate_dota_scenes(tmp_path / "src", num_images=2, size=300, seed=1)
    s1 = split_dataset(tmp_path / "src", tmp_path / "out", sizes=(128,), gaps=(32,), progress=False)
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    shutil.rmtree(tmp_path / "out" / "labelTxt")  # simulate an interruption
    s2 = split_dataset(tmp_path / "src", tmp_path / "out", sizes=(128,), gaps=(32,), progress=False)
    again = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert s1 == s2 and first == again


def test_labels_free_mode_and_parallel_workers(tmp_path: Path):
    generate_dota_scenes(tmp_path / "src", num_images=2, size=300, seed=2)
    shutil.rmtree(tmp_path / "src" / "labelTxt")
    s = split_dataset(tmp_path / "src", tmp_path / "out", sizes=(200,), gaps=(50,), workers=2, progress=False)
    assert s["images"] == 2 and s["patches"] == 8 and not (tmp_path / "out" / "labelTxt").exists()


@pytest.mark.realdata
def test_round_trip_on_real_dota_example(shared_data: Path, tmp_path: Path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    for stem in ("P0706", "P1888"):  # the two images that come with labels
        (src / "images" / f"{stem}.png").symlink_to(shared_data / "dota_devkit_example/images" / f"{stem}.png")
        shutil.copy(shared_data / "dota_devkit_example/labelTxt" / f"{stem}.txt", src / "labelTxt")
    orig, merged = _round_trip(src, tmp_path, sizes=(512,), gaps=(128,))
    n = _check_reproduced(orig, merged, src / "images", (512,), (128,), (1.0,))
    assert n >= 0.95 * sum(len(a) for a in orig.values())
    assert merged["P0706"].meta.get("gsd") == orig["P0706"].meta.get("gsd")


def test_merge_annotations_deduplicates_and_drops_covered_pieces():
    full = np.array([[[10.0, 10], [30, 10], [30, 20], [10, 20]]])
    piece = np.array([[[0.0, 10], [6, 10], [6, 20], [0, 20]]])  # cut piece of the same object in another window
    anns = {
        "a__100__0___0": DOTAAnnotation(full.copy(), ["ship"], np.array([0])),
        "a__100__0___50": DOTAAnnotation(full - [0, 50], ["ship"], np.array([0])),
        "a__100__24___0": DOTAAnnotation(piece, ["ship"], np.array([2])),
    }
    merged = merge_annotations(anns)
    assert list(merged) == ["a"] and len(merged["a"]) == 1
    np.testing.assert_allclose(merged["a"].polys[0], full[0])
