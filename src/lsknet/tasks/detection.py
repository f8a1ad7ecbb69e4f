"""Oriented object detection task (Oriented R-CNN + LSKNet): LightningModule, LightningDataModule, ``build``,
``predict``. The demo is a use of this task and lives in :mod:`lsknet.tasks.detection_demo` (it imports this module,
never the reverse).

Config sections (defaults in ``configs/detect.yaml``; the official recipe in ``configs/dota_lsknet_t_orcnn.yaml``):

- ``model``: ``name`` (``lsknet_t``/``lsknet_s``), ``checkpoint`` (a detector checkpoint: MMRotate or lsknet),
  ``backbone_checkpoint`` (ImageNet weights), ``drop_path_rate``, ``proj_drop_rate`` (the official ``drop_rate``),
  ``fpn_channels``, ``rpn`` / ``roi`` (keyword overrides, see :func:`lsknet.models.oriented_rcnn.build_oriented_rcnn`).
- ``data``: ``train_root`` / ``val_root`` / ``test_root`` (DOTA-format folders: ``images/`` + ``labelTxt/``, e.g.
  from ``lsknet dota split``), ``val_gt_root`` (source-image ``labelTxt`` folder: validation patches are then merged
  to source images before evaluation), ``classes`` (``dota1.0`` or names), ``image_size`` (training resize;
  null = native), ``tile_size`` (prediction windows; default ``image_size``), ``test_resize`` (keep-ratio rescale of
  every image / window at validation, eval and prediction, boxes mapped back: the official test ``RResize``),
  ``batch_size``, ``eval_batch_size``,
  ``num_workers``, ``filter_empty`` (training images without objects are skipped, as MMRotate; false keeps them
  as negatives), ``min_object_size`` (training objects whose rbox side is below this many pixels are dropped at
  load and counted, as MMRotate's loader; also checked again on the training targets), ``keep_ratio``,
  ``augment`` (``flip``, ``rotate_p``, ``angle_range``, ``rect_classes``, ``min_size``: see
  :func:`lsknet.data.detection_transforms.train_transforms`), ``strict``.
- ``detect``: ``nan_patience`` (consecutive non-finite losses tolerated; each such step is skipped with a warning;
  then training stops with a saved checkpoint), ``eval_iou`` (0.5), ``eval_metric`` (``voc07``), ``merge_iou`` (0.1).
- ``optim`` (:mod:`lsknet.tasks.optim`), ``trainer`` (``monitor: val/mAP``), ``ema``.

Images enter the model as RGB 0..255 (the dataset's 0..1 images are scaled). Logged: ``train/loss`` and its parts,
``val/mAP`` (DOTA VOC07 by default, over classes present), ``val/mAP_50_95``; files (rank 0, run folder):
``{val,test}_dota_metrics.json`` / ``.csv`` and, outside fitting, ``{val,test}_pr_curves/pr_<class>.png``.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lsknet.data.detection import DOTADetectionDataset, collate_detection, train_transforms_from_config
from lsknet.data.dota import DOTAAnnotation, get_classes, read_labeltxt_dir
from lsknet.data.merge import merge_detections
from lsknet.data.task1 import results_to_task1  # noqa: F401  (part of this module's API)
from lsknet.errors import ConfigError, DatasetFormatError
from lsknet.evaluation.dota import evaluate_dota
from lsknet.inference.predictor import Predictor, list_image_sources, write_outputs
from lsknet.models.detectors import detector_from_config
from lsknet.tasks.base import TaskModule, TrainingDiverged, make_loader  # noqa: F401 - detection.TrainingDiverged

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# data


class DetectionDataModule(L.LightningDataModule):
    """Train / val / test loaders over DOTA-format folders (see the module docstring for the ``data`` keys)."""

    def __init__(self, data_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(data_cfg)
        self.classes = tuple(self.cfg["classes"])
        self.datasets: dict[str, DOTADetectionDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        strict = bool(self.cfg.get("strict", False))
        roots = {
            "train": self.cfg.get("train_root"),
            "val": self.cfg.get("val_root"),
            "test": self.cfg.get("test_root"),
        }
        if stage in (None, "fit") and "train" not in self.datasets:
            if not roots["train"]:
                raise ConfigError("data.train_root is not set: a DOTA-format folder (images/ + labelTxt/)")
            self.datasets["train"] = DOTADetectionDataset(
                roots["train"],
                self.classes,
                train_transforms_from_config(self.cfg, self.classes),
                filter_empty=bool(self.cfg.get("filter_empty", True)),
                strict=strict,
                min_size=float(self.cfg.get("min_object_size", 2.0)),
            )
            self.datasets["train"].report.log_summary(log)
        for split in ("val", "test"):
            if split not in self.datasets and roots[split] and (stage in (None, "fit", "validate") or split == stage):
                self.datasets[split] = DOTADetectionDataset(roots[split], self.classes, None, strict=strict)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items())
        log.info("detection data: %d classes; %s images", len(self.classes), sizes)

    def ground_truth(self, split: str) -> dict[str, DOTAAnnotation]:
        """Ground truth the ``split`` is evaluated against (source images when ``val_gt_root`` is set)."""
        gt_root = self.cfg.get(f"{split}_gt_root")
        if gt_root:
            return read_labeltxt_dir(gt_root, self.classes)
        dataset = self.datasets[split]
        return {i: dataset.annotations[i] or DOTAAnnotation() for i in dataset.image_ids}

    def merges_patches(self, split: str) -> bool:
        return bool(self.cfg.get(f"{split}_gt_root"))

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise ConfigError(f"no {split} data configured (data.{split}_root)")
        return make_loader(self.datasets[split], self.cfg, train, default_batch=2, collate_fn=collate_detection)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:  # no validation data: training runs without validation
            return []
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


# ---------------------------------------------------------------------------------------------------------------------
# module


def _images(batch: dict[str, Any]) -> list[torch.Tensor]:
    images = batch["images"]
    return [img * 255.0 for img in (images if isinstance(images, list) else images.unbind(0))]


class OrientedDetector(TaskModule):
    """Oriented R-CNN training / evaluation (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.classes = tuple(config["data"]["classes"])
        self.model = detector_from_config(config.get("model") or {}, len(self.classes), load_checkpoint=False)
        self.model.test_resize = (config.get("data") or {}).get("test_resize")  # validation, eval and predict
        det_cfg = config.get("detect") or {}
        self.nan_patience = int(det_cfg.get("nan_patience") or self.nan_patience)
        self.min_object_size = float((config.get("data") or {}).get("min_object_size", 2.0))
        self._dropped_small = 0
        self._eval_results: dict[str, dict[str, torch.Tensor]] = {}

    def load_starting_weights(self, key: str, path: str) -> None:
        """``model.checkpoint``: a whole detector (MMRotate or lsknet); ``model.backbone_checkpoint``: ImageNet
        backbone weights, ignored when a whole detector is given (as :func:`build_oriented_rcnn` does)."""
        from lsknet.models.checkpoint import load_backbone_weights
        from lsknet.models.detector_base import load_detector_checkpoint

        if key == "checkpoint":
            load_detector_checkpoint(self.model, path)
        elif not (self.config.get("model") or {}).get("checkpoint"):
            load_backbone_weights(self.model.backbone, path)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections for RGB 0..255 images (list of (3, H, W))."""
        return self.model(images)

    def _targets(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        targets = []
        for rboxes, labels in zip(batch["rboxes"], batch["labels"]):
            keep = (rboxes[:, 2] >= self.min_object_size) & (rboxes[:, 3] >= self.min_object_size)
            keep &= torch.isfinite(rboxes).all(dim=1)
            self._dropped_small += int((~keep).sum())
            targets.append({"rboxes": rboxes[keep], "labels": labels[keep]})
        return targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.model(_images(batch), self._targets(batch))
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        if self.skip_non_finite(loss, losses):
            return self.skipped_loss()
        n = len(batch["labels"])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for key, value in losses.items():
            self.log(f"train/{key}", value.detach(), on_step=True, on_epoch=False, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._dropped_small:
            log.info(
                "epoch %d: %d object(s) smaller than %.1f px dropped from the training targets",
                self.current_epoch,
                self._dropped_small,
                self.min_object_size,
            )
            self._dropped_small = 0

    def _eval_step(self, batch: dict[str, Any]) -> None:
        results = self.model(_images(batch))
        for image_id, res in zip(batch["image_id"], results):
            self._eval_results[image_id] = {k: v.detach().cpu() for k, v in res.items()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def _gather_results(self) -> dict[str, dict[str, torch.Tensor]]:
        results = self._eval_results
        self._eval_results = {}
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, results)
            results = {k: v for part in gathered for k, v in part.items()}
        return results

    def _eval_epoch_end(self, split: str) -> None:
        results = self._gather_results()
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if not isinstance(datamodule, DetectionDataModule) or trainer.sanity_checking:
            return
        det_cfg = self.config.get("detect") or {}
        if datamodule.merges_patches(split):
            dets = merge_detections(results, self.classes, iou_thr=float(det_cfg.get("merge_iou", 0.1)))
        else:
            dets = results_to_task1(results, self.classes)
        gt = datamodule.ground_truth(split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = evaluate_dota(
                dets,
                gt,
                classes=self.classes,
                metric=str(det_cfg.get("eval_metric", "voc07")),
                iou_thr=float(det_cfg.get("eval_iou", 0.5)),
            )
        self.log(f"{split}/mAP", float(report.mAP), prog_bar=True, sync_dist=False, rank_zero_only=False)
        if report.mAP_50_95 is not None:
            self.log(f"{split}/mAP_50_95", float(report.mAP_50_95), sync_dist=False)
        if trainer.is_global_zero:
            root = Path(trainer.default_root_dir)
            report.write_json(root / f"{split}_dota_metrics.json")
            report.write_csv(root / f"{split}_dota_metrics.csv")
            if trainer.state.fn != "fit":
                report.plot_pr_curves(root / f"{split}_pr_curves")
        self.last_eval_report = report


# ---------------------------------------------------------------------------------------------------------------------
# task contract


def build(cfg: dict[str, Any]) -> tuple[OrientedDetector, DetectionDataModule]:
    """Module + data module for ``cfg``; resolves ``data.classes`` (a list name such as ``dota1.0`` -> names)."""
    cfg = dict(cfg)
    data_cfg = dict(cfg.get("data") or {})
    try:
        data_cfg["classes"] = list(get_classes(data_cfg.get("classes") or "dota1.0"))
    except (KeyError, ValueError, DatasetFormatError) as err:
        raise ConfigError(f"data.classes: {err}") from None
    cfg["data"] = data_cfg
    return OrientedDetector(cfg), DetectionDataModule(data_cfg)


def make_predictor(module: OrientedDetector, **options: Any) -> Predictor:
    """A :class:`~lsknet.inference.predictor.Predictor` for a trained module: tile size from the config
    (``data.tile_size``, else ``data.image_size``); an ``overlap`` not below the tile size becomes a quarter tile."""
    data_cfg = module.config.get("data") or {}
    tile = options.pop("tile_size", None) or data_cfg.get("tile_size") or data_cfg.get("image_size") or 1024
    tile = int(max(tile) if isinstance(tile, (list, tuple)) else tile)
    overlap = int(options.pop("overlap", 200))
    if overlap >= tile:
        overlap = tile // 4
    return Predictor(module.model, module.classes, tile_size=tile, overlap=overlap, **options)


def predict(
    module: OrientedDetector,
    sources: list[str | Path],
    out_dir: Path,
    score_thr: float = 0.05,
    tile_size: int | None = None,
    overlap: int = 200,
    batch_size: int = 2,
    draw_score_thr: float = 0.3,
    strict: bool | None = None,
    progress: bool = True,
    bands: str | list[int] | None = None,
    scale: str | tuple[float, float] | None = None,
    formats: str | list[str] | None = None,
    skip_existing: bool = False,
    optimize: bool = True,
) -> dict[str, Any]:
    """Detect oriented objects in images / folders of any size; writes ``out_dir/task1/Task1_<class>.txt``,
    ``out_dir/detections.json`` and, per image, ``out_dir/vis/<image>.png`` (plain images, boxes above
    ``draw_score_thr`` drawn) or ``out_dir/scenes/<image>/`` (rasters: read window by window, vector outputs, see
    :mod:`lsknet.inference.scenes`). ``formats``: a comma list of ``task1, json, png, geojson, gpkg, shp`` (default
    all but ``shp``; plain images get GeoJSON in pixel coordinates only when asked). ``bands`` / ``scale``: see
    :mod:`lsknet.inference.geotiff`. ``optimize``: run :func:`lsknet.optimize_for_inference`'s copy (default) or
    the eager model. Under ``torchrun`` scenes (or one scene's windows) are shared among the ranks.

    Unreadable images are skipped with a :class:`DataSkipWarning` and counted (``strict``, default
    ``data.strict``: an error instead)."""
    if strict is None:
        strict = bool((module.config.get("data") or {}).get("strict", False))
    predictor = make_predictor(
        module, tile_size=tile_size, overlap=overlap, batch_size=batch_size, score_thr=score_thr, optimize=optimize
    )
    module.eval()
    return predict_files(
        predictor, sources, out_dir, draw_score_thr=draw_score_thr, strict=strict, progress=progress, bands=bands,
        scale=scale, formats=formats, skip_existing=skip_existing,
    )  # fmt: skip


def predict_files(
    predictor: Predictor,
    sources: list[str | Path],
    out_dir: Path,
    draw_score_thr: float = 0.3,
    strict: bool = False,
    progress: bool = True,
    bands: str | list[int] | None = None,
    scale: str | tuple[float, float] | None = None,
    formats: str | list[str] | None = None,
    skip_existing: bool = False,
) -> dict[str, Any]:
    """Run a :class:`Predictor` over images / folders / rasters and write the files of :func:`predict` (which builds
    the predictor from a trained module; ``lsknet predict`` with an MMRotate detector file builds it from the file)."""
    from lsknet.inference.geotiff import is_raster_file, parse_bands, parse_scale
    from lsknet.inference.scenes import detection_features, distributed_context, predict_scenes, scene_dir
    from lsknet.inference.vectors import write_vectors

    known = ("task1", "json", "png", "geojson", "gpkg", "shp")
    wanted = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats or [])
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise ConfigError(f"--format: unknown {', '.join(unknown)}; expected a comma list of {', '.join(known)}")
    fmt = wanted or ["task1", "json", "png", "geojson", "gpkg"]
    ctx = distributed_context()
    start = time.perf_counter()
    items = list_image_sources(sources)
    rasters = [i for i, item in enumerate(items) if isinstance(item, Path) and is_raster_file(item)]
    plain = [i for i in range(len(items)) if i not in set(rasters)]
    by_index: dict[int, Any] = {}
    scene_results = predict_scenes(
        predictor, [items[i] for i in rasters], out_dir, bands=parse_bands(bands), scale=parse_scale(scale),
        formats=fmt, skip_existing=skip_existing, draw_score_thr=draw_score_thr, progress=progress and ctx.rank == 0,
        ctx=ctx, strict=strict,
    )  # fmt: skip
    by_index.update({i: r for i, r in zip(rasters, scene_results) if r is not None})
    plain_results = []
    if plain and ctx.rank == 0:
        plain_results = list(predictor.predict([items[i] for i in plain], progress=progress, strict=strict))
        index_of = {items[i]: i for i in plain}
        by_index.update({index_of[det.path]: det for det in plain_results})
    results = [by_index[i] for i in sorted(by_index)]
    summary: dict[str, Any] = {}
    if ctx.rank == 0:
        written = write_outputs(results, out_dir, task1="task1" in fmt, json_file="json" in fmt, png=False)
        if "png" in fmt:
            write_outputs(plain_results, out_dir, task1=False, json_file=False, png=True, draw_score_thr=draw_score_thr)
        wanted_vectors = [f for f in wanted if f in ("geojson", "gpkg", "shp")]
        for det in plain_results if wanted_vectors else []:
            warnings.warn(f"{det.path}: no georeference; vector outputs are in pixel coordinates", stacklevel=2)
            geoms, columns = detection_features(det, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
            stem = scene_dir(out_dir, det.image_id) / "detections"
            write_vectors(stem, wanted_vectors, geoms, columns, None, layer="detections")
        summary = {k: v for k, v in written.items() if not isinstance(v, list)}
    return {
        "num_images": len(results),
        "skipped": len(items) - len(results),
        "num_detections": sum(len(r) for r in results),
        "skipped_windows": sum(int(r.extra.get("skipped_windows", 0)) for r in results),
        "dropped_on_nodata": sum(int(r.extra.get("dropped_on_nodata", 0)) for r in results),
        "seconds": round(time.perf_counter() - start, 2),
        "out_dir": str(out_dir),
        **summary,
    }
