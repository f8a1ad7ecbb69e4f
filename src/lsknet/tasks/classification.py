"""Scene classification task: LightningModule, LightningDataModule, ``build``, ``predict`` (demo: its own module).

Config sections used here (defaults in ``configs/classify.yaml``):

- ``model``: ``name`` (``lsknet_t``/``lsknet_s`` or any timm model), ``checkpoint`` (backbone weights to fine-tune
  from, any official layout; the classifier head is re-initialised for the new classes), ``drop_rate``,
  ``drop_path_rate``.
- ``data``: ``root`` (class-per-folder tree split by ``train_ratio`` with ``split_seed``) or ``train_root`` +
  ``val_root`` (+ ``test_root``); ``classes`` (filled in from the folder names at build time and stored in the
  checkpoint); ``image_size``, ``batch_size``, ``eval_batch_size``, ``num_workers``, ``strict``, ``verify``,
  ``high_bit`` (16-bit scaling, see :mod:`lsknet.data.scene`), ``augment`` (see ``build_transforms``).
- ``loss.label_smoothing``; ``optim`` (see :mod:`lsknet.tasks.optim`); ``trainer.monitor`` = ``val/acc``.

Logged metrics: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` (top-1), ``val/acc_top5``,
``val/mean_class_acc``; files (global rank 0, in the run folder): ``val_confusion_matrix.csv``/``.png``,
``val_metrics.json`` with per-class accuracy (``test_`` prefix for the test split).
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from lsknet.data.imageio import list_images
from lsknet.data.scene import (
    SceneFolderDataset,
    build_transforms,
    find_classes,
    load_image,
    scan_scene_folder,
    stratified_split,
)
from lsknet.errors import ConfigError, DatasetFormatError, DataSkipWarning
from lsknet.evaluation.classification import write_classification_report
from lsknet.tasks.base import TaskModule, make_loader

log = logging.getLogger(__name__)

LSKNET_NAMES = ("lsknet_t", "lsknet_s")


def build_classifier(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The network: ``lsknet.create_model`` for LSKNet names (loads ``checkpoint``), else ``timm.create_model``."""
    name = str(model_cfg.get("name", "lsknet_t"))
    kwargs = {
        "num_classes": int(num_classes),
        "drop_rate": float(model_cfg.get("drop_rate", 0.0)),
        "drop_path_rate": float(model_cfg.get("drop_path_rate", 0.0)),
    }
    checkpoint = model_cfg.get("checkpoint")
    from lsknet.models.backbone import lsk_kwargs

    lsk = lsk_kwargs(model_cfg, name)
    if name in LSKNET_NAMES:
        from lsknet.models.factory import create_model

        return create_model(name, checkpoint=checkpoint, **kwargs, **lsk)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ConfigError(f"model.name: {err}") from None
    if checkpoint:
        from lsknet.models.factory import load_checkpoint

        load_checkpoint(model, checkpoint, strict=False)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# data


class SceneDataModule(L.LightningDataModule):
    """Train / val / test loaders over class-per-folder trees (see module docstring for the ``data`` keys)."""

    def __init__(self, data_cfg: dict[str, Any], seed: int = 0) -> None:
        super().__init__()
        self.cfg = dict(data_cfg)
        self.seed = int(seed)
        self.classes: list[str] = list(self.cfg["classes"])
        self.datasets: dict[str, SceneFolderDataset] = {}
        self.skipped: list[tuple[str, str]] = []

    def _scan(self, root: str | Path):
        samples, summary = scan_scene_folder(
            root,
            classes=self.classes,
            verify=bool(self.cfg.get("verify", True)),
            strict=bool(self.cfg.get("strict", False)),
            high_bit=str(self.cfg.get("high_bit", "percentile")),
        )
        self.skipped.extend(summary.skipped)
        return samples

    def _dataset(self, samples, train: bool) -> SceneFolderDataset:
        transform = build_transforms(int(self.cfg.get("image_size", 224)), train, self.cfg.get("augment"))
        return SceneFolderDataset(samples, self.classes, transform, str(self.cfg.get("high_bit", "percentile")))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.cfg
        if cfg.get("train_root") or cfg.get("val_root"):
            if stage in (None, "fit") and cfg.get("train_root"):
                self.datasets["train"] = self._dataset(self._scan(cfg["train_root"]), train=True)
            if cfg.get("val_root"):
                self.datasets["val"] = self._dataset(self._scan(cfg["val_root"]), train=False)
        elif cfg.get("root"):
            samples = self._scan(cfg["root"])
            train_idx, val_idx = stratified_split(
                [label for _, label in samples], float(cfg.get("train_ratio", 0.2)), int(cfg.get("split_seed", 0))
            )
            self.datasets["train"] = self._dataset([samples[i] for i in train_idx], train=True)
            self.datasets["val"] = self._dataset([samples[i] for i in val_idx], train=False)
        else:
            raise ConfigError("data.root (or data.train_root / data.val_root) is not set")
        if cfg.get("test_root") and stage in (None, "test"):
            self.datasets["test"] = self._dataset(self._scan(cfg["test_root"]), train=False)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items())
        note = f", {len(self.skipped)} unreadable image(s) skipped" if self.skipped else ""
        log.info("scene data: %d classes; %s images%s", len(self.classes), sizes, note)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise ConfigError(f"no {split} data configured (data.{split}_root or data.root)")
        return make_loader(self.datasets[split], self.cfg, train, default_batch=32)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


# ---------------------------------------------------------------------------------------------------------------------
# module


class SceneClassifier(TaskModule):
    """Image -> class logits; cross-entropy with label smoothing; AdamW + warmup + cosine (``optim`` section)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.classes: list[str] = list(config["data"]["classes"])
        num_classes = len(self.classes)
        self.model = build_classifier({**(config.get("model") or {}), "checkpoint": None}, num_classes)
        smoothing = float((config.get("loss") or {}).get("label_smoothing", 0.0))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.eval_metrics = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                        "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
                        "mean_class_acc": MulticlassAccuracy(num_classes, top_k=1, average="macro"),
                    }
                )
                for stage in ("val", "test")
            }
        )
        self.confusion = nn.ModuleDict({stage: MulticlassConfusionMatrix(num_classes) for stage in ("val", "test")})

    def load_starting_weights(self, key: str, path: str) -> None:
        """``model.checkpoint``: backbone weights in any official layout (head kept only if it fits)."""
        from lsknet.models.factory import load_checkpoint

        if key != "checkpoint":
            super().load_starting_weights(key, path)
        load_checkpoint(self.model, path, strict=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for normalised images (N, 3, H, W)."""
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        if self.skip_non_finite(loss):
            return self.skipped_loss()
        self.train_acc(logits, targets)
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(targets)
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, targets = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, targets)
        self.eval_metrics[stage].update(logits, targets)
        self.confusion[stage].update(logits, targets)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(targets))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        values = self.eval_metrics[stage].compute()  # synchronised over processes by torchmetrics
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "acc")
        confusion = self.confusion[stage].compute().cpu().numpy()
        self.eval_metrics[stage].reset()
        self.confusion[stage].reset()
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        extra = {
            "split": stage,
            "epoch": int(self.current_epoch),
            "top1": float(values["acc"]),
            "top5": float(values["acc_top5"]),
        }
        # The PNG is drawn outside of fitting only (final validation with the best checkpoint, eval): it is slow.
        plot = trainer.state.fn != "fit"
        write_classification_report(confusion, self.classes, trainer.default_root_dir, f"{stage}_", extra, plot=plot)


# ---------------------------------------------------------------------------------------------------------------------
# task contract


def build(cfg: dict[str, Any]) -> tuple[SceneClassifier, SceneDataModule]:
    """Module + data module for ``cfg``. Fills ``cfg['data']['classes']`` from the data folders when unset."""
    cfg = dict(cfg)
    data_cfg = dict(cfg.get("data") or {})
    if not data_cfg.get("classes"):
        root = data_cfg.get("root") or data_cfg.get("train_root")
        if not root:
            raise ConfigError("data.root (or data.train_root) is not set: the folder of class sub-folders to train on")
        data_cfg["classes"] = find_classes(root)
    if len(data_cfg["classes"]) < 2:
        raise DatasetFormatError(f"need at least 2 classes, found {data_cfg['classes']}")
    cfg["data"] = data_cfg
    return SceneClassifier(cfg), SceneDataModule(data_cfg, seed=int(cfg.get("seed", 0)))


@torch.no_grad()
def predict(
    module: SceneClassifier,
    sources: list[str | Path],
    out_dir: Path,
    topk: int = 5,
    batch_size: int | None = None,
    strict: bool | None = None,
    tile: int | None = None,
    stride: int | None = None,
    bands: str | list[int] | None = None,
    scale: str | tuple[float, float] | None = None,
    formats: str | list[str] | None = None,
    skip_existing: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Classify images / folders of images; writes ``out_dir/predictions.csv``.

    CSV columns: ``path, label_1, score_1, ..., label_k, score_k`` (softmax probabilities, best first).
    Unreadable images are skipped with a :class:`DataSkipWarning` and counted (``strict``: error).

    Grid mode (``tile`` given): every raster (GeoTIFF, VRT, ...) is classified cell by cell (``tile`` pixels,
    ``stride`` apart, default ``tile``) into ``out_dir/scenes/<image>/`` (``classes.tif``, ``cells.geojson|gpkg|shp``,
    ``formats`` picks them, default ``geotiff,geojson,gpkg``; see :mod:`lsknet.inference.scene_grid`); ``bands`` /
    ``scale`` are the raster input rule; under ``torchrun`` the cells are shared among the ranks.
    """
    cfg = module.config
    data_cfg = cfg.get("data") or {}
    strict = bool(data_cfg.get("strict", False)) if strict is None else strict
    high_bit = str(data_cfg.get("high_bit", "percentile"))
    transform = build_transforms(int(data_cfg.get("image_size", 224)), train=False)
    batch_size = int(batch_size or data_cfg.get("eval_batch_size") or data_cfg.get("batch_size") or 32)
    topk = max(1, min(int(topk), len(module.classes)))
    paths = list_images(sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module.eval()
    device = module.device
    grid_summary: dict[str, Any] = {}
    if tile is not None:
        from lsknet.inference.geotiff import is_raster_file

        rasters = [p for p in paths if is_raster_file(p)]
        paths = [p for p in paths if not is_raster_file(p)]
        grid_summary = _predict_grids(module, rasters, out_dir, transform, int(tile), int(stride or tile), topk,
                                      batch_size, bands, scale, formats, skip_existing, strict, progress)  # fmt: skip
        if not paths:
            return grid_summary
    rows: list[list[Any]] = []
    skipped: list[str] = []
    batch_images: list[torch.Tensor] = []
    batch_paths: list[Path] = []

    def flush() -> None:
        if not batch_images:
            return
        probs = module(torch.stack(batch_images).to(device)).float().softmax(dim=1).cpu()
        scores, indices = probs.topk(topk, dim=1)
        for path, score_row, index_row in zip(batch_paths, scores.tolist(), indices.tolist()):
            row: list[Any] = [str(path)]
            for score, index in zip(score_row, index_row):
                row += [module.classes[index], f"{score:.6f}"]
            rows.append(row)
        batch_images.clear()
        batch_paths.clear()

    for path in paths:
        try:
            image = load_image(path, high_bit)
        except DatasetFormatError as err:
            if strict:
                raise
            warnings.warn(f"skipping unreadable image {path}: {err}", DataSkipWarning, stacklevel=2)
            skipped.append(str(path))
            continue
        batch_images.append(transform(torch.from_numpy(image).permute(2, 0, 1)))
        batch_paths.append(path)
        if len(batch_images) == batch_size:
            flush()
    flush()
    csv_path = out_dir / "predictions.csv"
    temp = out_dir / ".predictions.csv.tmp"
    with temp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *(f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("label", "score"))])
        writer.writerows(rows)
    os.replace(temp, csv_path)
    summary = {"predictions_csv": str(csv_path), "num_images": len(rows), "skipped": skipped}
    if grid_summary:
        summary["num_images"] += grid_summary["num_images"]
        summary["skipped"] = skipped + grid_summary["skipped"]
        summary.update({k: v for k, v in grid_summary.items() if k not in summary})
    return summary


def _predict_grids(
    module: SceneClassifier,
    rasters: list[Path],
    out_dir: Path,
    transform: Any,
    tile: int,
    stride: int,
    topk: int,
    batch_size: int,
    bands: Any,
    scale: Any,
    formats: Any,
    skip_existing: bool,
    strict: bool,
    progress: bool,
) -> dict[str, Any]:
    """Grid mode of :func:`predict` for ``rasters`` (see :mod:`lsknet.inference.scene_grid`)."""
    import rasterio

    from lsknet.inference.geotiff import GeoTiffSource, parse_bands, parse_scale
    from lsknet.inference.scene_grid import classify_grid, write_grid
    from lsknet.inference.scenes import distributed_context, scene_dir

    known = ("geotiff", "geojson", "gpkg", "shp")
    fmt = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats or known[:3])
    if any(f not in known for f in fmt):
        raise ConfigError(f"--format: grid mode writes {', '.join(known)}; got {', '.join(fmt)}")
    ctx = distributed_context()

    @torch.no_grad()
    def classify(tiles: list[torch.Tensor]) -> torch.Tensor:
        return module(torch.stack([transform(t) for t in tiles]).to(module.device)).float().softmax(dim=1)

    done, skipped, skipped_cells = [], [], 0
    for path in rasters:
        if skip_existing and (scene_dir(out_dir, path.stem) / "result.json").is_file():
            done.append(str(path))
            continue
        try:
            with rasterio.Env(GDAL_CACHEMAX=64), GeoTiffSource(path, parse_bands(bands), parse_scale(scale)) as src:
                result = classify_grid(classify, src, tile, stride, topk, batch_size, ctx, progress and ctx.rank == 0)
                if ctx.rank == 0:
                    write_grid(result, src, module.classes, out_dir, path.stem, fmt)
        except DatasetFormatError as err:
            if strict:
                raise
            warnings.warn(f"skipping {path}: {err}", DataSkipWarning, stacklevel=2)
            skipped.append(str(path))
            continue
        skipped_cells += result["skipped_cells"]
        done.append(str(path))
    return {"num_images": len(done), "skipped": skipped, "skipped_cells": skipped_cells, "out_dir": str(out_dir)}


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``predictions.csv`` as dicts (column name -> text)."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))
