"""Synthetic aerial scenes in the real DOTA format: the project's own detection data.

Each scene is textured ground (soil/grass/urban mixture) with roads, optional water and parking lots, and
oriented objects whose classes differ clearly in shape, colour and scale:

==================  ===================================================  ==================
class               looks like                                           length (px, x1.0)
==================  ===================================================  ==================
small-vehicle       small coloured rectangle with a dark windshield      10-16
large-vehicle       long light trailer + differently coloured cab        26-44
plane               white cross: fuselage, swept wings, tail plane       36-72
ship                pointed hull with a superstructure (often on water)  34-80
storage-tank        light disc with a rim and a shadow (box angle 0)     18-44
tennis-court        green court with white lines and a net  (optional)   40-56
swimming-pool       cyan basin with a white border          (optional)   20-50
roundabout          grey ring road around a green island    (optional)   40-70
==================  ===================================================  ==================

Objects have arbitrary angles (storage-tank and roundabout: axis-aligned boxes), some are packed densely
in parking lots, some are cut by the image border (``truncated_fraction``) and some are drawn with low
contrast and marked difficult (``difficult_fraction``). Output: ``out/images/<id>.png`` and
``out/labelTxt/<id>.txt`` (``imagesource``/``gsd`` headers, clockwise polygons), plus ``out/meta.json``.
Scene ``i`` of seed ``s`` is the same whatever ``num_images`` is (one RNG per scene).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lsknet.data.dota import DOTAAnnotation, atomic_write_text, write_labeltxt

#: Classes drawn by default (5 classes that differ in shape, colour and scale).
SYNTH_CLASSES: tuple[str, ...] = ("small-vehicle", "large-vehicle", "plane", "ship", "storage-tank")
#: Every class the generator can draw.
SYNTH_ALL_CLASSES: tuple[str, ...] = SYNTH_CLASSES + ("tennis-court", "swimming-pool", "roundabout")


#: An easy, quickly learnable setting (bigger objects, fewer per image, no difficult/truncated objects) for
#: CPU demos: ``generate_dota_scenes(out, num_images, size=256, seed=0, **EASY_SCENE_OPTIONS)``.
EASY_SCENE_OPTIONS: dict = {
    "objects_per_image": (4, 10),
    "object_scale": (1.3, 1.8),
    "difficult_fraction": 0.0,
    "truncated_fraction": 0.0,
    "dense_probability": 0.25,
    "noise": 0.01,
}


@dataclass(frozen=True)
class _Spec:
    length: tuple[float, float]  # long side in pixels (object_scale 1.0)
    aspect: tuple[float, float]  # length / width
    axis_aligned: bool = False  # box angle fixed to 0 (round objects)


_SPECS: dict[str, _Spec] = {
    "small-vehicle": _Spec((10, 16), (1.8, 2.4)),
    "large-vehicle": _Spec((26, 44), (2.8, 4.0)),
    "plane": _Spec((36, 72), (0.9, 1.1)),
    "ship": _Spec((34, 80), (3.0, 5.0)),
    "storage-tank": _Spec((18, 44), (1.0, 1.0), axis_aligned=True),
    "tennis-court": _Spec((40, 56), (2.0, 2.3)),
    "swimming-pool": _Spec((20, 50), (1.3, 2.5)),
    "roundabout": _Spec((40, 70), (1.0, 1.0), axis_aligned=True),
}


def _local_to_image(pts: np.ndarray, cx: float, cy: float, theta: float) -> list[tuple[float, float]]:
    """Local object frame (x along the length, y across) -> image pixels; theta clockwise on screen."""
    c, s = math.cos(theta), math.sin(theta)
    x = pts[:, 0] * c - pts[:, 1] * s + cx
    y = pts[:, 0] * s + pts[:, 1] * c + cy
    return list(zip(x.tolist(), y.tolist()))


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _ellipse(rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of ``cell``-pixel spacing, bicubically upsampled."""
    gh, gw = h // cell + 3, w // cell + 3
    grid = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((gw * cell, gh * cell), Image.BICUBIC)
    out = np.asarray(img)[cell : cell + h, cell : cell + w]
    return np.clip(out, 0.0, 1.0)


def _ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Aerial-looking ground: a blend of soil, grass and urban grey with multi-scale texture (float HxWx3)."""
    palettes = np.array(
        [[132, 120, 96], [92, 108, 70], [118, 118, 112], [150, 138, 110], [80, 96, 64]], dtype=np.float32
    )
    a, b = palettes[rng.choice(len(palettes), 2, replace=False)]
    mix = _smooth_noise(rng, h, w, max(16, min(h, w) // 4))[..., None]
    base = a * mix + b * (1 - mix)
    detail = 0.6 * _smooth_noise(rng, h, w, 24) + 0.3 * _smooth_noise(rng, h, w, 6) + 0.1 * _smooth_noise(rng, h, w, 2)
    return base * (0.82 + 0.36 * detail[..., None])


class _Scene:
    """One image being drawn: PIL canvas plus the occupancy list used to avoid overlapping objects."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        self.image = Image.fromarray(np.clip(_ground(rng, h, w), 0, 255).astype(np.uint8), "RGB")
        self.draw = ImageDraw.Draw(self.image)
        self.occupied: list[tuple[float, float, float]] = []
        self.water = Image.new("L", (w, h), 0)

    def free(self, cx: float, cy: float, r: float, slack: float = 0.9) -> bool:
        return all((cx - x) ** 2 + (cy - y) ** 2 >= (slack * (r + q)) ** 2 for x, y, q in self.occupied)

    def on_water(self, cx: float, cy: float) -> bool:
        xi, yi = int(min(max(cx, 0), self.w - 1)), int(min(max(cy, 0), self.h - 1))
        return self.water.getpixel((xi, yi)) > 0

    def road(self) -> None:
        rng = self.rng
        width = rng.uniform(10, 22)
        theta = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.h)
        span = 2 * (self.h + self.w)
        grey = float(rng.uniform(55, 85))
        self.draw.polygon(
            _local_to_image(_rect(-span, -width / 2, span, width / 2), cx, cy, theta), fill=(int(grey),) * 3
        )
        edge = int(grey + 25)
        for side in (-1, 1):
            y0 = side * width / 2
            self.draw.line(_local_to_image(_rect(-span, y0, span, y0)[:2], cx, cy, theta), fill=(edge,) * 3, width=1)
        for k in range(-int(span // 20), int(span // 20)):  # dashed centre line
            x0 = k * 20.0
            self.draw.line(
                _local_to_image(np.array([[x0, 0.0], [x0 + 9, 0.0]]), cx, cy, theta), fill=(200, 200, 190), width=1
            )

    def water_body(self) -> None:
        rng = self.rng
        cx, cy = rng.choice([0, self.w]), rng.uniform(0, self.h)
        r = rng.uniform(0.35, 0.6) * max(self.h, self.w)
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        rad = r * (1 + 0.15 * np.sin(3 * t + rng.uniform(0, 6)) + 0.08 * np.sin(7 * t + rng.uniform(0, 6)))
        pts = [(float(cx + rr * math.cos(tt)), float(cy + rr * math.sin(tt))) for rr, tt in zip(rad, t)]
        colour = tuple(int(v) for v in rng.uniform([30, 55, 75], [50, 80, 105]))
        self.draw.polygon(pts, fill=colour)
        ImageDraw.Draw(self.water).polygon(pts, fill=255)

    def parking_lot(self) -> tuple[float, float, float, float, float]:
        """Concrete lot; returns (cx, cy, length, width, theta) for packing vehicles."""
        rng = self.rng
        length, width = rng.uniform(0.25, 0.45) * self.w, rng.uniform(0.12, 0.22) * self.h
        cx, cy = rng.uniform(0.25, 0.75) * self.w, rng.uniform(0.25, 0.75) * self.h
        theta = rng.uniform(-math.pi / 2, math.pi / 2)
        shade = int(rng.uniform(150, 185))
        self.draw.polygon(
            _local_to_image(_rect(-length / 2, -width / 2, length / 2, width / 2), cx, cy, theta), fill=(shade,) * 3
        )
        return cx, cy, length, width, theta


def _colour(rng: np.random.Generator, choices: Sequence[Sequence[int]], jitter: float = 12) -> tuple[int, int, int]:
    base = np.asarray(choices[int(rng.integers(len(choices)))], dtype=np.float64)
    return tuple(int(v) for v in np.clip(base + rng.normal(0, jitter, 3), 0, 255))  # type: ignore[return-value]


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def _draw_object(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, name: str, cx: float, cy: float, L: float, S: float, th: float
) -> None:
    """Draw class ``name`` with length ``L`` (local x) and span ``S`` (local y) at angle ``th``."""

    def poly(pts: np.ndarray, fill: tuple[int, int, int], dx: float = 0.0, dy: float = 0.0) -> None:
        draw.polygon(_local_to_image(pts, cx + dx, cy + dy, th), fill=fill)

    hl, hs = L / 2, S / 2
    sh = (max(1.0, 0.08 * L), max(1.0, 0.08 * L))  # shadow offset (sun from the top-left)
    shadow = (40, 40, 38)
    if name == "small-vehicle":
        body = _colour(
            rng, [(200, 30, 30), (235, 235, 235), (30, 60, 160), (25, 25, 25), (220, 200, 40), (150, 150, 155)]
        )
        poly(_rect(-hl, -hs, hl, hs), shadow, *sh)
        poly(_rect(-hl, -hs, hl, hs), body)
        poly(_rect(0.08 * L, -hs * 0.8, 0.28 * L, hs * 0.8), (30, 35, 45))
        poly(_rect(-0.3 * L, -hs * 0.75, 0.06 * L, hs * 0.75), _shade(body, 1.15))
    elif name == "large-vehicle":
        trailer = _colour(rng, [(225, 225, 220), (200, 200, 205), (230, 120, 40), (180, 190, 200)])
        cab = _colour(rng, [(200, 30, 30), (30, 70, 170), (240, 240, 240), (40, 120, 60)])
        poly(_rect(-hl, -hs, hl, hs), shadow, *sh)
        poly(_rect(-hl, -hs, 0.26 * L, hs), trailer)
        poly(_rect(0.26 * L, -hs * 0.7, 0.3 * L, hs * 0.7), (30, 30, 30))
        poly(_rect(0.3 * L, -hs * 0.95, hl, hs * 0.95), cab)
    elif name == "plane":
        c = _colour(rng, [(238, 238, 238), (210, 212, 215), (190, 195, 200)], 8)
        fw = 0.065 * L  # half fuselage width
        fuselage = np.array([[hl, 0], [hl - 0.08 * L, -fw], [-hl, -fw * 0.6], [-hl, fw * 0.6], [hl - 0.08 * L, fw]])
        wing = np.array([[0.12 * L, -fw], [-0.12 * L, -hs], [-0.22 * L, -hs], [-0.08 * L, -fw]])
        tail = np.array([[-0.36 * L, -fw * 0.6], [-0.46 * L, -0.17 * S], [-hl, -0.17 * S], [-0.46 * L, -fw * 0.5]])
        mirror = np.array([1.0, -1.0])
        parts = [fuselage, wing, wing * mirror, tail, tail * mirror]
        for p in parts:
            poly(p, shadow, *sh)
        for p in parts:
            poly(p, c)
        poly(np.array([[hl - 0.02 * L, 0], [hl - 0.1 * L, -fw * 0.7], [hl - 0.1 * L, fw * 0.7]]), (60, 70, 80))
    elif name == "ship":
        hull = _colour(rng, [(235, 235, 230), (90, 95, 100), (160, 50, 40), (60, 80, 110)])
        outline = np.array([[-hl, -hs], [0.25 * L, -hs], [hl, 0], [0.25 * L, hs], [-hl, hs]])
        poly(outline, _shade(hull, 0.45), *(v * 0.5 for v in sh))
        poly(outline, hull)
        poly(_rect(-0.42 * L, -hs * 0.6, -0.12 * L, hs * 0.6), _colour(rng, [(250, 250, 250), (120, 120, 120)]))
        poly(_rect(-0.05 * L, -hs * 0.35, 0.2 * L, hs * 0.35), _shade(hull, 0.8))
    elif name == "storage-tank":
        c = _colour(rng, [(225, 225, 222), (200, 200, 195), (180, 185, 190)], 8)
        poly(_ellipse(hl, hl), shadow, *sh)
        poly(_ellipse(hl, hl), _shade(c, 0.75))
        poly(_ellipse(hl * 0.86, hl * 0.86), c)
        poly(_ellipse(hl * 0.15, hl * 0.15), _shade(c, 0.7))
    elif name == "tennis-court":
        poly(_rect(-hl, -hs, hl, hs), _colour(rng, [(150, 80, 60), (70, 120, 80)]))
        court = _colour(rng, [(50, 130, 80), (50, 90, 150)])
        poly(_rect(-hl * 0.85, -hs * 0.75, hl * 0.85, hs * 0.75), (245, 245, 245))
        poly(_rect(-hl * 0.82, -hs * 0.71, hl * 0.82, hs * 0.71), court)
        poly(_rect(-0.01 * L - 0.5, -hs * 0.75, 0.01 * L + 0.5, hs * 0.75), (245, 245, 245))
        poly(_rect(-hl * 0.45, -0.01 * S - 0.5, hl * 0.45, 0.01 * S + 0.5), (245, 245, 245))
    elif name == "swimming-pool":
        poly(_rect(-hl, -hs, hl, hs), (235, 235, 230))
        poly(_rect(-hl * 0.88, -hs * 0.82, hl * 0.88, hs * 0.82), _colour(rng, [(40, 170, 220), (60, 200, 230)], 8))
    elif name == "roundabout":
        poly(_ellipse(hl, hl), (75, 75, 78))
        poly(_ellipse(hl * 0.6, hl * 0.6), (190, 190, 185))
        poly(_ellipse(hl * 0.55, hl * 0.55), _colour(rng, [(80, 125, 70), (100, 140, 80)]))
    else:  # pragma: no cover - guarded by the class check in generate_dota_scenes
        raise ValueError(f"no drawing for class {name!r}")


def _box_corners(cx: float, cy: float, L: float, S: float, th: float) -> np.ndarray:
    """Clockwise (on screen) corners of the L x S box; DOTA-style 4x2."""
    return np.asarray(_local_to_image(_rect(-L / 2, -S / 2, L / 2, S / 2), cx, cy, th), dtype=np.float64)


def _render_scene(
    rng: np.random.Generator,
    h: int,
    w: int,
    classes: Sequence[str],
    n_objects: int,
    object_scale: tuple[float, float],
    difficult_fraction: float,
    truncated_fraction: float,
    dense_probability: float,
    noise: float,
    roads: tuple[int, int],
) -> tuple[np.ndarray, DOTAAnnotation]:
    scene = _Scene(rng, h, w)
    if "ship" in classes and rng.random() < 0.6:
        scene.water_body()
    for _ in range(int(rng.integers(roads[0], roads[1] + 1))):
        scene.road()
    lot = None
    if "small-vehicle" in classes and rng.random() < dense_probability:
        lot = scene.parking_lot()

    polys: list[np.ndarray] = []
    names: list[str] = []
    diffs: list[int] = []

    def place(name: str, cx: float, cy: float, L: float, S: float, th: float, difficult: bool) -> None:
        if difficult:  # low contrast: draw on a copy and blend it in weakly
            layer = scene.image.copy()
            _draw_object(ImageDraw.Draw(layer), rng, name, cx, cy, L, S, th)
            scene.image.paste(Image.blend(scene.image, layer, float(rng.uniform(0.25, 0.4))))
            scene.draw = ImageDraw.Draw(scene.image)
        else:
            _draw_object(scene.draw, rng, name, cx, cy, L, S, th)
        scene.occupied.append((cx, cy, 0.5 * math.hypot(L, S)))
        polys.append(_box_corners(cx, cy, L, S, th))
        names.append(name)
        diffs.append(1 if difficult else 0)

    def size_of(name: str) -> tuple[float, float]:
        spec = _SPECS[name]
        scale = rng.uniform(*object_scale)
        L = rng.uniform(*spec.length) * scale
        S = L / rng.uniform(*spec.aspect)
        return L, S

    if lot is not None:  # densely packed small vehicles in rows along the lot
        lcx, lcy, ll, lw, lth = lot
        L, S = size_of("small-vehicle")
        pitch_x, pitch_y = S * 1.5, L * 1.25
        nx, ny = max(1, int(ll // pitch_x) - 1), max(1, int(lw // pitch_y))
        for iy in range(ny):
            for ix in range(nx):
                if rng.random() < 0.35:
                    continue
                ux = (ix - (nx - 1) / 2) * pitch_x + rng.normal(0, 0.6)
                uy = (iy - (ny - 1) / 2) * pitch_y + rng.normal(0, 0.6)
                c, s = math.cos(lth), math.sin(lth)
                cx, cy = lcx + ux * c - uy * s, lcy + ux * s + uy * c
                th = lth + math.pi / 2 + rng.normal(0, 0.04) + (math.pi if rng.random() < 0.5 else 0.0)
                if 0 <= cx < w and 0 <= cy < h:
                    place("small-vehicle", cx, cy, L, S, th, rng.random() < difficult_fraction)

    for _ in range(n_objects):
        name = classes[int(rng.integers(len(classes)))]
        L, S = size_of(name)
        th = 0.0 if _SPECS[name].axis_aligned else float(rng.uniform(-math.pi, math.pi))
        r = 0.5 * math.hypot(L, S)
        truncated = rng.random() < truncated_fraction
        for _attempt in range(40):
            if truncated:  # centre near a border so that part of the object is outside the image
                side = int(rng.integers(4))
                off = rng.uniform(-0.3, 0.25) * min(L, S) if name != "plane" else rng.uniform(-0.2, 0.2) * L
                extent = h if side < 2 else w
                along = rng.uniform(r, max(r + 1, extent - r))
                cx, cy = [(off, along), (w - off, along), (along, off), (along, h - off)][side]
            else:
                cx, cy = rng.uniform(r, max(r + 1, w - r)), rng.uniform(r, max(r + 1, h - r))
            if name == "ship" and scene.water.getbbox() is not None and rng.random() < 0.8:
                if not scene.on_water(cx, cy):
                    continue
            if scene.free(cx, cy, r):
                place(name, cx, cy, L, S, th, rng.random() < difficult_fraction)
                break

    pixels = np.asarray(scene.image, dtype=np.float32)
    if noise > 0:
        pixels = pixels + rng.normal(0, noise * 255.0, pixels.shape).astype(np.float32)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    ann = DOTAAnnotation(
        np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2),
        names,
        np.asarray(diffs, dtype=np.int64),
        {"imagesource": "lsknet-synthetic", "gsd": "0.5"},
    )
    return pixels, ann


def generate_dota_scenes(
    out_dir: str | Path,
    num_images: int = 16,
    size: int | tuple[int, int] = 512,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    objects_per_image: tuple[int, int] = (8, 20),
    object_scale: tuple[float, float] = (1.0, 1.0),
    difficult_fraction: float = 0.05,
    truncated_fraction: float = 0.08,
    dense_probability: float = 0.4,
    noise: float = 0.02,
    roads: tuple[int, int] = (1, 3),
    prefix: str | None = None,
) -> dict:
    """Write ``num_images`` synthetic DOTA scenes to ``out_dir/images`` (PNG) and ``out_dir/labelTxt``.

    Args:
        size: image side in pixels, or (height, width).
        seed: scenes are a pure function of (seed, index).
        classes: subset of :data:`SYNTH_ALL_CLASSES` (default :data:`SYNTH_CLASSES`).
        objects_per_image: (min, max) freely placed objects per scene (parking-lot cars come on top).
        object_scale: (min, max) multiplier of the class sizes (see the module table).
        difficult_fraction: share of objects drawn with low contrast and marked difficult (1).
        truncated_fraction: share of free objects placed across the image border.
        dense_probability: chance that a scene has a parking lot packed with small vehicles.
        noise: std of additive Gaussian pixel noise as a fraction of 255.
        roads: (min, max) number of roads.
        prefix: image id prefix (default ``S<seed>``); ids are ``<prefix>_<index:05d>``.

    Returns a summary dict: ``root``, ``image_ids``, ``classes``, ``num_objects``, ``per_class``, ``num_difficult``.
    """
    classes = tuple(classes) if classes is not None else SYNTH_CLASSES
    unknown = [c for c in classes if c not in _SPECS]
    if unknown or not classes:
        raise ValueError(f"synthetic classes must be a non-empty subset of {SYNTH_ALL_CLASSES}, got {unknown}")
    if num_images < 0:
        raise ValueError("num_images must be >= 0")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 64:
        raise ValueError(f"image size must be >= 64 px, got {h}x{w}")
    lo, hi = objects_per_image
    if lo < 0 or hi < lo:
        raise ValueError(f"objects_per_image must be (min, max) with 0 <= min <= max, got {objects_per_image}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labelTxt").mkdir(parents=True, exist_ok=True)
    prefix = prefix if prefix is not None else f"S{seed}"
    counts: Counter[str] = Counter()
    n_difficult = 0
    ids = []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        pixels, ann = _render_scene(
            rng,
            h,
            w,
            classes,
            int(rng.integers(lo, hi + 1)),
            object_scale,
            difficult_fraction,
            truncated_fraction,
            dense_probability,
            noise,
            roads,
        )
        image_id = f"{prefix}_{i:05d}"
        tmp = out / "images" / f".{image_id}.tmp.png"
        Image.fromarray(pixels).save(tmp)
        tmp.replace(out / "images" / f"{image_id}.png")
        write_labeltxt(out / "labelTxt" / f"{image_id}.txt", ann)
        counts.update(ann.names)
        n_difficult += int((ann.difficult > 0).sum())
        ids.append(image_id)
    summary = {
        "root": str(out),
        "image_ids": ids,
        "classes": list(classes),
        "size": [h, w],
        "seed": seed,
        "num_objects": int(sum(counts.values())),
        "num_difficult": n_difficult,
        "per_class": {c: int(counts.get(c, 0)) for c in classes},
    }
    atomic_write_text(out / "meta.json", json.dumps(summary | {"image_ids": len(ids)}, indent=2) + "\n")
    return summary
