"""A generated aerial-like scene-classification set (class-per-folder PNGs) for the demo and the tests.

Six classes, each a texture a remote-sensing classifier has to tell apart by structure as much as by colour
(greens appear in forest, farmland and roads; browns in farmland, desert and residential):

- ``forest``: dense overlapping tree crowns; ``water``: smooth blue with faint ripples and a shore tint;
- ``farmland``: parallel field strips at a random angle; ``residential``: a grid of roofs between streets;
- ``roads``: two or three grey roads with centre lines across a field; ``desert``: sand with long dunes.

Every image depends only on ``(seed, class, index)``, so the set is identical on every machine and run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SCENE_CLASSES = ("desert", "farmland", "forest", "residential", "roads", "water")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return xs, ys


def _noise(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    return rng.normal(0.0, amount, (size, size, 1))


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency random field in [0, 1] (bilinear upsampling of a coarse random grid)."""
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _forest(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    image = np.empty((size, size, 3))
    image[:] = np.array([30, 60, 25]) * rng.uniform(0.8, 1.2)
    for _ in range(int(size * size / 25)):
        cx, cy = rng.uniform(0, size, 2)
        radius = rng.uniform(1.5, 4.0) * size / 64
        shade = np.array([40, 95, 35]) * rng.uniform(0.6, 1.4)
        crown = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
        image[crown] = shade
    return image + _noise(rng, size, 8)


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    angle = rng.uniform(0, np.pi)
    wavelength = rng.uniform(3, 6) * size / 64
    ripple = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / wavelength)
    depth = _smooth_field(rng, size, 2)[:, :, None]
    base = np.array([25, 60, 110]) * rng.uniform(0.8, 1.2)
    shallow = np.array([60, 110, 120])
    image = base * (1 - 0.5 * depth) + shallow * 0.5 * depth + 4 * ripple[:, :, None]
    return image + _noise(rng, size, 3)


def _farmland(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    angle = rng.uniform(0, np.pi)
    width = rng.uniform(4, 9) * size / 64
    strip = np.floor((xs * np.cos(angle) + ys * np.sin(angle)) / width).astype(int)
    palette = np.array([[110, 140, 50], [170, 150, 80], [130, 100, 60], [190, 180, 90], [80, 120, 40]], float)
    colours = palette[rng.integers(0, len(palette), strip.max() - strip.min() + 1)]
    image = colours[strip - strip.min()] * rng.uniform(0.85, 1.15)
    return image + _noise(rng, size, 6)


def _residential(rng: np.random.Generator, size: int) -> np.ndarray:
    image = np.empty((size, size, 3))
    image[:] = np.array([150, 145, 135]) * rng.uniform(0.85, 1.15)  # streets / pavement
    block = int(rng.integers(9, 14) * size / 64)
    offset = rng.integers(0, block, 2)
    roofs = np.array([[150, 70, 55], [110, 100, 95], [170, 120, 90], [90, 60, 50]], float)
    for y0 in range(-block + int(offset[0]), size, block):
        for x0 in range(-block + int(offset[1]), size, block):
            margin = max(2, block // 4)
            h, w = rng.integers(max(2, block // 3), block - margin + 1, 2)
            ys, xs = (
                slice(max(0, y0 + margin), max(0, y0 + margin + h)),
                slice(max(0, x0 + margin), max(0, x0 + margin + w)),
            )
            image[ys, xs] = roofs[rng.integers(0, len(roofs))] * rng.uniform(0.8, 1.2)
    return image + _noise(rng, size, 6)


def _roads(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    image = np.empty((size, size, 3))
    ground = np.array([[100, 130, 60], [160, 150, 100]], float)[rng.integers(0, 2)]
    image[:] = ground * (0.8 + 0.4 * _smooth_field(rng, size)[:, :, None])
    for _ in range(int(rng.integers(2, 4))):
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
        distance = np.abs((xs - cx) * np.sin(angle) - (ys - cy) * np.cos(angle))
        half = rng.uniform(2.5, 4.0) * size / 64
        image[distance <= half] = np.array([85, 85, 90]) * rng.uniform(0.9, 1.1)
        image[distance <= 0.5] = np.array([220, 210, 120])
    return image + _noise(rng, size, 5)


def _desert(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    angle = rng.uniform(0, np.pi)
    wavelength = rng.uniform(10, 18) * size / 64
    phase = xs * np.cos(angle) + ys * np.sin(angle) + 3 * np.sin(ys * 0.2 + rng.uniform(0, 6))
    dune = np.sin(phase * 2 * np.pi / wavelength)
    sand = np.array([205, 175, 120]) * rng.uniform(0.85, 1.1)
    image = sand * (1 + 0.12 * dune[:, :, None])
    return image + _noise(rng, size, 4)


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "desert": _desert,
    "farmland": _farmland,
    "forest": _forest,
    "residential": _residential,
    "roads": _roads,
    "water": _water,
}


def render_scene(name: str, size: int, seed: int, index: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``name``, determined by ``(seed, class, index)``."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic scene class {name!r}; known: {', '.join(SCENE_CLASSES)}")
    rng = np.random.default_rng([int(seed), SCENE_CLASSES.index(name), int(index)])
    return np.clip(np.round(GENERATORS[name](rng, int(size))), 0, 255).astype(np.uint8)


def generate_scene_dataset(
    root: str | Path,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SCENE_CLASSES,
) -> Path:
    """Write ``root/<class>/<class>_<i>.png`` for ``per_class`` images of each class; returns ``root``."""
    root = Path(root)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(render_scene(name, size, seed, index)).save(folder / f"{name}_{index:04d}.png")
    return root
