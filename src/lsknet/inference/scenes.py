"""Oriented detection over whole raster scenes, window by window, with georeferenced vector outputs.

:func:`detect_scene` reads a :class:`~lsknet.inference.geotiff.GeoTiffSource` in windows of the predictor's tile size
(the same layout as :meth:`Predictor.predict`), skips windows without a single valid pixel (nodata / alpha 0 / outside
the mask) without running the model and counts them, merges the windows' boxes like :class:`Predictor` and drops (and
counts) detections whose centre lies on an invalid pixel. Memory is bounded by the window batch, not the scene.

:func:`write_scene` writes one scene's outputs into ``<out>/scenes/<image_id>/`` atomically (a temporary folder
renamed into place: a scene's outputs are complete or absent): ``detections.geojson`` (WGS84), ``detections.gpkg``
(layer ``detections``, raster CRS), ``detections.shp``, ``preview.png`` (a decimated picture of the scene with the
boxes) and ``result.json`` (the full-precision result, read back by ``--skip-existing``).

Vector features are the Task1 polygons: corners rounded to :data:`TASK1_DECIMALS` as in ``Task1_<class>.txt``, mapped
through the raster's affine transform.

Several processes (``torchrun``): :func:`distributed_context` joins the process group (gloo on CPU); scenes are
sharded across ranks, or the windows of one scene when there are fewer scenes than ranks; the result is identical
to one process (windows are merged in the same order).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsknet.errors import DatasetFormatError, DataSkipWarning
from lsknet.inference.geotiff import GeoTiffSource
from lsknet.inference.predictor import Detections, Predictor, tile_origins
from lsknet.inference.vectors import VECTOR_FORMATS, pixel_to_crs, rings_to_polygons, write_vectors

log = logging.getLogger(__name__)

TASK1_DECIMALS = 2


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (``world == 1``: no process group)."""

    rank: int = 0
    world: int = 1

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def distributed_context() -> DistContext:
    """The torchrun rank / world size from the environment; joins the process group (gloo, or nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "win") -> Any:
    """A tqdm bar (rate in ``unit``/s and ETA) or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def detect_scene(
    predictor: Predictor,
    src: GeoTiffSource,
    image_id: str | None = None,
    ctx: DistContext | None = None,
    progress: bool = False,
) -> Detections:
    """Detections of one raster scene; ``extra`` counts ``windows``, ``skipped_windows`` (no valid pixel) and
    ``dropped_on_nodata`` (centre on an invalid pixel). With ``ctx.world > 1`` the windows are shared among the ranks
    (call it on every rank; every rank returns the same result)."""
    ctx = ctx or DistContext()
    tile, overlap = predictor.tile_size, predictor.overlap
    height, width = src.shape
    windows = [(y0, x0) for y0 in tile_origins(height, tile, overlap) for x0 in tile_origins(width, tile, overlap)]
    mine = list(range(ctx.rank, len(windows), ctx.world))
    bar = progress_bar(len(mine), image_id or src.path.stem, progress)
    parts: list[tuple[int, int, int, dict[str, torch.Tensor]]] = []

    def run(keys: list[int], crops: list[torch.Tensor]) -> None:
        outputs = predictor._run([c.float() for c in crops])  # noqa: SLF001 - same package
        for index, res in zip(keys, outputs):
            y0, x0 = windows[index]
            parts.append((index, x0, y0, {k: v.detach().cpu() for k, v in res.items()}))

    boxes = [(i, *windows[i], min(tile, height - windows[i][0]), min(tile, width - windows[i][1])) for i in mine]
    skipped = run_windows(src, boxes, predictor.batch_size, run, bar)
    if ctx.world > 1:
        gathered = ctx.gather((parts, skipped))
        parts = sorted((p for rank_parts, _ in gathered for p in rank_parts), key=lambda p: p[0])
        skipped = sum(s for _, s in gathered)
    if parts:
        rboxes, scores, labels = predictor._merge([(x0, y0, res) for _, x0, y0, res in parts])  # noqa: SLF001
    else:
        rboxes, scores, labels = torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    keep = torch.from_numpy(src.valid_at(rboxes[:, 0].double().numpy(), rboxes[:, 1].double().numpy()))
    dropped = int((~keep).sum()) if len(keep) else 0
    det = Detections(
        image_id or src.path.stem,
        rboxes[keep],
        scores[keep],
        labels[keep],
        predictor.classes,
        (height, width),
        src.path,
        {"windows": len(windows), "skipped_windows": skipped, "dropped_on_nodata": dropped},
    )
    return det


def run_windows(
    src: GeoTiffSource,
    windows: Sequence[tuple[Any, int, int, int, int]],
    batch_size: int,
    run: Callable[[list[Any], list[torch.Tensor]], None],
    bar: Any = None,
) -> int:
    """Read ``(key, y, x, h, w)`` windows through the model-input rule and call ``run(keys, crops)`` per batch of
    ``batch_size`` (crops uint8 ``(3, h, w)`` tensors); windows without a valid pixel are not run. Returns how many
    were skipped; ``bar`` (tqdm) advances per window and is closed at the end."""
    src.intensity_limits()  # per-scene statistics once, before the windows
    skipped = 0
    keys: list[Any] = []
    crops: list[torch.Tensor] = []
    for key, y, x, h, w in windows:
        pixels = src.read_model_window(y, x, h, w)
        if pixels is None:
            skipped += 1
        else:
            keys.append(key)
            crops.append(torch.from_numpy(pixels).permute(2, 0, 1))
        if len(crops) >= batch_size:
            run(keys, crops)
            if bar is not None:
                bar.update(len(crops))
            keys, crops = [], []
        if pixels is None and bar is not None:
            bar.update(1)
    if crops:
        run(keys, crops)
        if bar is not None:
            bar.update(len(crops))
    if bar is not None:
        bar.close()
    return skipped


def task1_corners(det: Detections) -> np.ndarray:
    """``(N, 4, 2)`` corners exactly as the Task1 lines hold them (rounded to :data:`TASK1_DECIMALS`)."""
    return np.round(det.corners.double().numpy(), TASK1_DECIMALS)


def detection_features(det: Detections, transform: Any) -> tuple[list[Any], dict[str, list[Any]]]:
    """Shapely polygons in the raster CRS and the attribute columns ``class``, ``class_id``, ``score``."""
    rings = pixel_to_crs(transform, task1_corners(det)) if len(det) else np.zeros((0, 4, 2))
    columns = {
        "class": det.names,
        "class_id": [int(v) for v in det.labels.tolist()],
        "score": [round(float(v), 6) for v in det.scores.tolist()],
    }
    return rings_to_polygons(rings), columns


def result_to_json(det: Detections) -> dict[str, Any]:
    """Full-precision record of a scene result (read back by :func:`result_from_json`)."""
    return {
        "image_id": det.image_id,
        "path": str(det.path) if det.path else None,
        "image_size": list(det.image_size),
        "classes": list(det.classes),
        "rboxes": det.rboxes.double().tolist(),
        "scores": det.scores.double().tolist(),
        "labels": det.labels.tolist(),
        "extra": det.extra,
    }


def result_from_json(obj: dict[str, Any]) -> Detections:
    """The :class:`Detections` written by :func:`result_to_json`."""
    return Detections(
        obj["image_id"],
        torch.tensor(obj["rboxes"], dtype=torch.float32).reshape(-1, 5),
        torch.tensor(obj["scores"], dtype=torch.float32),
        torch.tensor(obj["labels"], dtype=torch.long),
        tuple(obj["classes"]),
        tuple(obj["image_size"]),
        Path(obj["path"]) if obj.get("path") else None,
        dict(obj.get("extra") or {}),
    )


def scene_dir(out_dir: str | Path, image_id: str) -> Path:
    """Where one scene's outputs go: ``<out_dir>/scenes/<image_id>``."""
    return Path(out_dir) / "scenes" / image_id


def load_finished(out_dir: str | Path, image_id: str) -> Detections | None:
    """The stored result of a scene whose outputs are complete, else None (for ``--skip-existing``)."""
    path = scene_dir(out_dir, image_id) / "result.json"
    if not path.is_file():
        return None
    return result_from_json(json.loads(path.read_text()))


def write_scene(
    det: Detections,
    src: GeoTiffSource,
    out_dir: str | Path,
    formats: Sequence[str] = ("geojson", "gpkg"),
    preview: bool = True,
    draw_score_thr: float = 0.3,
) -> dict[str, str]:
    """Write one scene's outputs atomically into :func:`scene_dir` (see the module docstring); returns paths."""
    tmp = new_scene_dir(out_dir, det.image_id)
    vector_formats = [f for f in formats if f in VECTOR_FORMATS]
    if vector_formats:
        if not src.georeferenced:
            warnings.warn(f"{src.path}: no georeference; vector outputs are in pixel coordinates", stacklevel=2)
        geoms, columns = detection_features(det, src.transform if src.georeferenced else (1, 0, 0, 0, 1, 0))
        write_vectors(tmp / "detections", vector_formats, geoms, columns, src.crs, layer="detections")
    if preview:
        _save_preview(det, src, tmp / "preview.png", draw_score_thr)
    (tmp / "result.json").write_text(json.dumps(result_to_json(det)) + "\n")
    return publish_scene_dir(tmp, out_dir, det.image_id)


def new_scene_dir(out_dir: str | Path, image_id: str) -> Path:
    """An empty temporary folder beside :func:`scene_dir` to write one scene's outputs into."""
    final = scene_dir(out_dir, image_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_scene_dir(tmp: Path, out_dir: str | Path, image_id: str) -> dict[str, str]:
    """Rename the finished temporary folder to :func:`scene_dir` (replacing an older one); returns its files."""
    final = scene_dir(out_dir, image_id)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return {p.name: str(final / p.name) for p in sorted(final.iterdir())}


def _save_preview(det: Detections, src: GeoTiffSource, path: Path, score_thr: float, max_side: int = 2048) -> None:
    from lsknet.inference.predictor import draw_detections

    picture, factor = src.overview(max_side)
    shown = det.select(det.scores >= score_thr)
    scaled = shown.rboxes.clone()
    scaled[:, :4] *= factor
    small = Detections(det.image_id, scaled, shown.scores, shown.labels, det.classes, picture.shape[:2])
    draw_detections(picture, small, score_thr=score_thr, labels=factor >= 0.5).save(path, format="PNG")


def predict_scenes(
    predictor: Predictor,
    paths: Sequence[Path],
    out_dir: str | Path,
    bands: Sequence[int] | None = None,
    scale: tuple[float, float] | None = None,
    formats: Sequence[str] = ("geojson", "gpkg", "png"),
    skip_existing: bool = False,
    draw_score_thr: float = 0.3,
    progress: bool = False,
    ctx: DistContext | None = None,
    strict: bool = True,
) -> list[Detections | None]:
    """Detect in every raster of ``paths`` and write each scene's outputs; returns the results in input order on
    every rank. Scenes are sharded across ranks (``ctx``), or the windows of each scene when there are fewer scenes
    than ranks. ``skip_existing``: scenes whose outputs are complete are read back instead of predicted. Rasters that
    cannot be opened or read raise :class:`DatasetFormatError` (``strict``) or are skipped with a warning (None)."""
    import rasterio

    ctx = ctx or DistContext()
    shard_scenes = ctx.world > 1 and len(paths) >= ctx.world
    results: dict[int, Detections | None] = {}
    for index, path in enumerate(paths):
        image_id = Path(path).stem
        if shard_scenes and index % ctx.world != ctx.rank:
            continue
        done = load_finished(out_dir, image_id) if skip_existing else None
        if done is not None:
            log.info("%s: outputs exist, skipped (--skip-existing)", path)
            results[index] = done
            continue
        start = time.perf_counter()
        try:
            with rasterio.Env(GDAL_CACHEMAX=64), GeoTiffSource(path, bands=bands, scale=scale) as src:
                det = detect_scene(predictor, src, image_id, ctx if not shard_scenes else DistContext(), progress)
                if shard_scenes or ctx.rank == 0:
                    write_scene(det, src, out_dir, formats, preview="png" in formats, draw_score_thr=draw_score_thr)
        except DatasetFormatError as err:
            if strict:
                raise
            warnings.warn(f"skipping {path}: {err}", DataSkipWarning, stacklevel=2)
            results[index] = None
            continue
        results[index] = det
        log.info(
            "%s: %d detections in %.1f s; %d of %d windows skipped (no valid pixel); %d dropped (centre on nodata)",
            path, len(det), time.perf_counter() - start, det.extra["skipped_windows"], det.extra["windows"],
            det.extra["dropped_on_nodata"],
        )  # fmt: skip
    if shard_scenes:
        merged: dict[int, Detections | None] = {}
        for part in ctx.gather(results):
            merged.update(part)
        results = merged
    return [results[i] for i in range(len(paths))]
