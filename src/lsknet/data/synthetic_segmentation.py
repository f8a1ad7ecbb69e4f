"""Generated aerial-like scenes with exact masks, for tests and ``lsknet demo --task segment``.

Six ISPRS-like classes (indices as in :data:`lsknet.data.segmentation.ISPRS_CLASSES`): impervious ground with
roads (0), buildings = rectangles with shaded roofs (1), low vegetation patches (2), trees = discs (3), cars =
small rectangles along roads (4), clutter = small blobs (5). Every class has its own colour family plus noise and
texture, so a segmenter learns them in a few hundred steps while chance-level mIoU stays low.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lsknet.data.segmentation import ISPRS_CLASSES, ISPRS_PALETTE

CLASS_COLORS = {
    0: (128, 128, 128),  # asphalt / pavement
    1: (150, 70, 50),  # roofs
    2: (150, 200, 90),  # grass
    3: (30, 90, 30),  # tree crowns
    4: (40, 60, 220),  # cars
    5: (200, 60, 200),  # clutter
}


def render_scene(
    size: int | tuple[int, int] = 256, seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(H, W, 3)`` uint8 RGB image and ``(H, W)`` uint8 class-index mask (classes 0..5)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    mask = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    scale = max(h, w) / 256.0

    for _ in range(int(rng.integers(2, 5) * scale)):  # low-vegetation patches (ellipses)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(15, 45) * max(1, scale**0.5), rng.uniform(15, 45) * max(1, scale**0.5)
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 2
    roads = []
    for _ in range(max(1, int(rng.integers(1, 3) * scale))):  # roads keep class 0 over vegetation
        if rng.random() < 0.5:
            y0 = int(rng.integers(0, h - 12))
            mask[y0 : y0 + 14, :] = 0
            roads.append(("h", y0))
        else:
            x0 = int(rng.integers(0, w - 12))
            mask[:, x0 : x0 + 14] = 0
            roads.append(("v", x0))
    for _ in range(int(rng.integers(3, 7) * scale)):  # buildings
        bh, bw = int(rng.integers(18, 50)), int(rng.integers(18, 50))
        y0, x0 = int(rng.integers(0, max(1, h - bh))), int(rng.integers(0, max(1, w - bw)))
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1
    for _ in range(int(rng.integers(4, 10) * scale)):  # trees
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 12)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 3
    for kind, pos in roads:  # cars on the roads
        for _ in range(int(rng.integers(1, 4))):
            if kind == "h":
                x0 = int(rng.integers(0, w - 10))
                mask[pos + 3 : pos + 8, x0 : x0 + 10] = 4
            else:
                y0 = int(rng.integers(0, h - 10))
                mask[y0 : y0 + 10, pos + 3 : pos + 8] = 4
    for _ in range(int(rng.integers(1, 4) * scale)):  # clutter blobs
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 7)
        mask[np.abs(yy - cy) + np.abs(xx - cx) < r] = 5

    colors = np.array([CLASS_COLORS[k] for k in range(6)], dtype=np.float32)
    image = colors[mask]
    texture = np.sin(xx / rng.uniform(2, 5)) * np.cos(yy / rng.uniform(2, 5)) * 12.0
    image += texture[..., None] * (mask[..., None] != 0)
    roof_shade = (xx % 16 < 8) * 15.0  # ridge shading on roofs
    image[mask == 1] += roof_shade[mask == 1, None]
    image += rng.normal(0.0, 14.0, size=image.shape)
    image *= rng.uniform(0.85, 1.15)  # global brightness
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_scene_set(
    out_dir: str | Path, num: int = 16, size: int = 256, seed: int = 0, color_masks: bool = False
) -> dict[str, Any]:
    """Write ``num`` scenes as ``img_dir/scene_XXXX.png`` and ``ann_dir/scene_XXXX.png``.

    Masks are index PNGs (0..5) by default, or ISPRS RGB colour masks with ``color_masks`` (the Potsdam/Vaihingen
    on-disk coding). Returns ``{"images": n, "classes": [...], "img_dir": ..., "ann_dir": ..., "files": [...]}``.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    img_dir, ann_dir = out_dir / "img_dir", out_dir / "ann_dir"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = np.array(ISPRS_PALETTE, dtype=np.uint8)
    files = []
    for i in range(num):
        image, mask = render_scene(size, rng)
        name = f"scene_{i:04d}.png"
        Image.fromarray(image).save(img_dir / name)
        Image.fromarray(palette[mask] if color_masks else mask).save(ann_dir / name)
        files.append(name)
    return {
        "images": num,
        "classes": list(ISPRS_CLASSES),
        "img_dir": str(img_dir),
        "ann_dir": str(ann_dir),
        "files": files,
    }
