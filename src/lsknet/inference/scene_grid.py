"""Scene classification over a large raster: a grid of model-size cells, a class GeoTIFF and grid-cell vectors.

Cells are ``tile`` x ``tile`` pixel windows whose top-left corners are ``stride`` apart, starting at the raster's
top-left pixel; only cells that fit inside the raster are used (a border strip narrower than ``tile`` at the right /
bottom is left out when the raster is not a multiple of the stride). Each cell is read through the model-input rule
(:meth:`~lsknet.inference.geotiff.GeoTiffSource.read_uint8`), classified, and its top-k classes kept; cells without a
valid pixel are skipped (not run) and counted.

Outputs in ``<out>/scenes/<image_id>/`` (written atomically, like detection scenes):

- ``classes.tif``: the top-1 class index per cell, one pixel per cell at the stride's resolution, centred on the cell
  (``transform = raster transform * translation((tile - stride) / 2) * scale(stride)``), nodata 255, the raster CRS.
- ``cells.geojson`` (WGS84) / ``cells.gpkg`` (layer ``cells``, raster CRS) / ``cells.shp``: one polygon per classified
  cell (its full ``tile`` footprint) with ``row``, ``col``, ``class_1``, ``score_1`` ... ``class_k``, ``score_k``.
- ``result.json``: the per-cell top-k (read back by ``--skip-existing``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsknet.errors import ConfigError
from lsknet.inference.geotiff import GeoTiffLabelWriter, GeoTiffSource
from lsknet.inference.scenes import DistContext, new_scene_dir, progress_bar, publish_scene_dir, run_windows
from lsknet.inference.vectors import VECTOR_FORMATS, pixel_to_crs, rings_to_polygons, write_vectors


def grid_cells(height: int, width: int, tile: int, stride: int) -> tuple[int, int]:
    """Number of cell rows and columns (cells that fit inside the raster; at least one, clipped, if it is smaller)."""
    if tile <= 0 or stride <= 0:
        raise ConfigError(f"--tile and --stride must be positive, got {tile}, {stride}")
    return max(1, (height - tile) // stride + 1), max(1, (width - tile) // stride + 1)


def classify_grid(
    classify: Callable[[list[torch.Tensor]], torch.Tensor],
    src: GeoTiffSource,
    tile: int,
    stride: int,
    topk: int = 3,
    batch_size: int = 16,
    ctx: DistContext | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-k classes of every grid cell; ``classify`` maps uint8 ``(3, h, w)`` tensors to ``(B, K)`` probabilities.

    Returns ``rows``, ``cols``, ``cells`` (list of ``(row, col, [class ids], [scores])`` for classified cells, row
    order) and ``skipped_cells``. With ``ctx.world > 1`` the cells are shared among the ranks (same result)."""
    ctx = ctx or DistContext()
    rows, cols = grid_cells(src.height, src.width, tile, stride)
    order = [(r, c) for r in range(rows) for c in range(cols)]
    mine = order[ctx.rank :: ctx.world]
    bar = progress_bar(len(mine), src.path.stem, progress, unit="cell")
    cells: list[tuple[int, int, list[int], list[float]]] = []

    def run(keys: list[tuple[int, int]], crops: list[torch.Tensor]) -> None:
        probs = classify(crops).float().cpu()
        scores, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        for (r, c), s, i in zip(keys, scores.tolist(), idx.tolist()):
            cells.append((r, c, i, s))

    windows = [((r, c), r * stride, c * stride, min(tile, src.height - r * stride), min(tile, src.width - c * stride))
               for r, c in mine]  # fmt: skip
    skipped = run_windows(src, windows, batch_size, run, bar)
    if ctx.world > 1:
        gathered = ctx.gather((cells, skipped))
        cells = sorted((cell for part, _ in gathered for cell in part), key=lambda cell: (cell[0], cell[1]))
        skipped = sum(s for _, s in gathered)
    return {"rows": rows, "cols": cols, "tile": tile, "stride": stride, "cells": cells, "skipped_cells": skipped}


def write_grid(
    result: dict[str, Any],
    src: GeoTiffSource,
    classes: Sequence[str],
    out_dir: str | Path,
    image_id: str,
    formats: Sequence[str] = ("geotiff", "geojson", "gpkg"),
) -> dict[str, str]:
    """Write the grid outputs of one scene (module docstring) atomically; returns ``{file name: path}``."""
    from rasterio import Affine

    tmp = new_scene_dir(out_dir, image_id)
    rows, cols, tile, stride = result["rows"], result["cols"], result["tile"], result["stride"]
    cells = result["cells"]
    transform = src.transform if src.georeferenced else Affine.identity()
    if "geotiff" in formats:
        grid = np.full((rows, cols), 255, np.uint8)
        for r, c, idx, _ in cells:
            grid[r, c] = idx[0]
        half = (tile - stride) / 2.0
        a, b, c, d, e, f = tuple(transform)[:6]  # transform * translation(half, half) * scale(stride), by hand
        cell_transform = Affine(a * stride, b * stride, a * half + b * half + c, d * stride, e * stride,
                                d * half + e * half + f)  # fmt: skip
        profile = {"height": rows, "width": cols, "crs": src.crs, "transform": cell_transform}
        writer = GeoTiffLabelWriter(tmp / "classes.tif", profile)
        writer.write_rows(0, grid)
        writer.close()
    vector_formats = [f for f in formats if f in VECTOR_FORMATS]
    if vector_formats:
        k = len(cells[0][2]) if cells else 0
        rings = np.asarray(
            [[(c * stride + dx, r * stride + dy) for dx, dy in ((0, 0), (tile, 0), (tile, tile), (0, tile))]
             for r, c, _, _ in cells], dtype=np.float64,
        ).reshape(-1, 4, 2)  # fmt: skip
        columns: dict[str, list[Any]] = {"row": [cell[0] for cell in cells], "col": [cell[1] for cell in cells]}
        for j in range(k):
            columns[f"class_{j + 1}"] = [classes[cell[2][j]] for cell in cells]
            columns[f"score_{j + 1}"] = [round(float(cell[3][j]), 6) for cell in cells]
        geoms = rings_to_polygons(pixel_to_crs(transform, rings))
        write_vectors(tmp / "cells", vector_formats, geoms, columns, src.crs if src.georeferenced else None, "cells")
    (tmp / "result.json").write_text(json.dumps({**result, "classes": list(classes)}) + "\n")
    return publish_scene_dir(tmp, out_dir, image_id)
