"""Semantic-segmentation task (``task: segment``): Lightning module + data module, ``predict`` and ``demo``.

Config sections (see ``lsknet/configs/segment.yaml`` for every key with its default):

- ``model``: ``variant`` (lsknet_t | lsknet_s | any timm name), ``head`` (unetformer | upernet), ``checkpoint``
  (whole segmenter) / ``backbone_checkpoint`` (official LSKNet ImageNet weights), ``aux_head``, ...
- ``data``: ``format`` (isprs | loveda | uavid | folder), ``root`` and per split ``train``/``val``/``test``
  ``{images, masks, image_suffix, mask_suffix, replace_parts, include}``, label options, tiling, augmentation.
- ``loss``: ``label_smoothing`` 0.05, ``dice_weight`` 1, ``aux_weight`` 0.4.  ``evaluation.exclude``: classes
  left out of mIoU / mF1 (e.g. ``[clutter]`` on ISPRS).  ``predict``: sliding-window settings.
Validation logs ``val/mIoU`` (monitored), ``val/mF1``, ``val/OA``, ``val/IoU/<class>`` and writes
``val_metrics.json`` + ``val_confusion.csv`` (+ ``.png`` outside of fitting) into the run folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix

from lsknet.data.imageio import list_images
from lsknet.data.seg_transforms import GeoSegTransform
from lsknet.data.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MaskCoding,
    SegmentationDataset,
    SegTransform,
    default_palette,
    find_pairs,
    mask_coding,
)
from lsknet.errors import ConfigError, DatasetFormatError
from lsknet.evaluation.segmentation import metrics_from_confusion, plot_confusion_png, write_confusion_csv, write_json
from lsknet.models.backbone import lsk_kwargs
from lsknet.models.segmentation import SegmentationLoss, build_segmenter, reject_old_unetformer_layout
from lsknet.tasks.base import TaskModule, make_loader

log = logging.getLogger(__name__)


def coding_from_config(data_cfg: dict[str, Any]) -> MaskCoding:
    """The label coding described by a ``data`` section."""
    return mask_coding(
        str(data_cfg.get("format", "folder")),
        data_cfg.get("num_classes"),
        class_names=data_cfg.get("class_names"),
        palette=data_cfg.get("palette"),
        clutter=str(data_cfg.get("clutter", "keep")),
        reduce_zero_label=data_cfg.get("reduce_zero_label"),
        ignore_index=int(data_cfg.get("ignore_index", 255)),
        unknown_colors=str(data_cfg.get("unknown_colors", "error")),
    )


def split_pairs(data_cfg: dict[str, Any], split: str) -> list[tuple[Path, Path]] | None:
    """Image/mask pairs of ``split`` (None when the split is not configured). A split is one mapping or a list of
    them (e.g. GeoSeg's LoveDA/UAVid training on train + val), their pairs concatenated."""
    spec = data_cfg.get(split)
    if not spec:
        return None
    if isinstance(spec, list):
        return [pair for i, part in enumerate(spec) for pair in _spec_pairs(data_cfg, f"{split}[{i}]", part)]
    return _spec_pairs(data_cfg, split, spec)


def _spec_pairs(data_cfg: dict[str, Any], split: str, spec: Any) -> list[tuple[Path, Path]]:
    if not isinstance(spec, dict) or "images" not in spec or "masks" not in spec:
        raise ConfigError(f"data.{split} must be a mapping with 'images' and 'masks' folders (or a list of them)")
    root = Path(data_cfg["root"]) if data_cfg.get("root") else Path(".")
    opts = {k: spec.get(k, data_cfg.get(k)) for k in ("image_suffix", "mask_suffix", "replace_parts")}
    pairs = find_pairs(
        root / spec["images"],
        root / spec["masks"],
        image_suffix=opts["image_suffix"] or "",
        mask_suffix=opts["mask_suffix"] or "",
        replace_parts=opts["replace_parts"] or None,
        strict=bool(data_cfg.get("strict", False)),
    )
    include = spec.get("include")
    if include:
        suffix = opts["image_suffix"] or ""
        wanted = set(include)
        kept = [p for p in pairs if (p[0].stem[: -len(suffix)] if suffix else p[0].stem) in wanted]
        found = {(p[0].stem[: -len(suffix)] if suffix else p[0].stem) for p in kept}
        if wanted - found:
            raise DatasetFormatError(
                f"data.{split}.include: not found in {root / spec['images']}: {sorted(wanted - found)}"
            )
        pairs = kept
    return pairs


def train_transform(c: dict[str, Any], ignore_index: int) -> SegTransform | GeoSegTransform:
    """The training augmentation of a ``data`` section: ``augment: geoseg`` (GeoSeg's UNetFormer pipeline: discrete
    ``scales``, SmartCrop to ``crop_size``, flip/rot90 probabilities, ``brightness_contrast``) or ``default``."""
    augment = str(c.get("augment", "default")).lower()
    if augment == "geoseg":
        return GeoSegTransform(
            scales=c.get("scales"), crop_size=c.get("crop_size"), max_ratio=float(c.get("smart_crop_max_ratio", 0.75)),
            hflip=c.get("hflip", False), vflip=c.get("vflip", False), rot90=c.get("rot90", False),
            brightness_contrast=c.get("brightness_contrast"), ignore_index=ignore_index,
        )  # fmt: skip
    if augment != "default":
        raise ConfigError(f"data.augment must be default or geoseg, got {augment!r}")
    return SegTransform(
        crop_size=c.get("crop_size"),
        scale_range=c.get("scale_range") or (1.0, 1.0),
        hflip=bool(c.get("hflip", True)),
        vflip=bool(c.get("vflip", True)),
        rot90=bool(c.get("rot90", True)),
        ignore_index=ignore_index,
    )


class SegmentationDataModule(L.LightningDataModule):
    """Train / val / test loaders from a ``data`` section (see module doc)."""

    def __init__(self, data_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = data_cfg
        self.coding = coding_from_config(data_cfg)
        self.datasets: dict[str, SegmentationDataset] = {}

    def _dataset(self, split: str) -> SegmentationDataset | None:
        if split in self.datasets:
            return self.datasets[split]
        pairs = split_pairs(self.cfg, split)
        if pairs is None:
            return None
        c = self.cfg
        mean, std = c.get("mean") or IMAGENET_MEAN, c.get("std") or IMAGENET_STD
        if split == "train":
            ds = SegmentationDataset(
                pairs, self.coding, train_transform(c, self.coding.ignore_index), tile_size=c.get("train_tile_size"),
                tile_stride=c.get("train_tile_stride"), repeats=int(c.get("repeats", 1)), mean=mean, std=std,
                mosaic_ratio=float(c.get("mosaic_ratio") or 0.0), mosaic_size=c.get("mosaic_size"),
                flip_copies=bool(c.get("train_flip_copies", False)), tile_pad=bool(c.get("train_tile_pad", False)),
            )  # fmt: skip
        else:
            ds = SegmentationDataset(
                pairs, self.coding, None, tile_size=c.get("val_tile_size"), tile_stride=c.get("val_tile_stride"),
                tile_partial=True, mean=mean, std=std,
            )  # fmt: skip
        self.datasets[split] = ds
        return ds

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._dataset("train")
        if stage in (None, "fit", "validate"):
            self._dataset("val")
        if stage in (None, "test"):
            self._dataset("test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self._dataset(split)
        if ds is None:
            raise ConfigError(f"data.{split} is not set (images/masks folders of the {split} split)")
        return make_loader(ds, self.cfg, shuffle, default_batch=8, collate_fn=_collate, eval_batch=1)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    shapes = {tuple(s["mask"].shape) for s in samples}
    if len(shapes) > 1:
        raise DatasetFormatError(
            f"cannot batch images of different sizes {sorted(shapes)}: set data.crop_size / data.val_tile_size "
            "or eval_batch_size=1"
        )
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "name": [s["name"] for s in samples],
    }


class SegmentationTask(TaskModule):
    """Segmenter + CE/Dice/aux loss; confusion-matrix metrics per evaluation epoch; AdamW + schedule from ``optim``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.coding = coding_from_config(config.get("data") or {})
        self.class_names = list(self.coding.class_names)
        self.palette = list(self.coding.palette or default_palette(self.coding.num_classes))
        m = dict(config.get("model") or {})
        self.model = build_segmenter(
            str(m.get("variant", "lsknet_t")),
            str(m.get("head", "unetformer")),
            self.coding.num_classes,
            aux_head=bool(m.get("aux_head", True)),
            decode_channels=m.get("decode_channels"),
            window_size=int(m.get("window_size", 8)),
            dropout=float(m.get("dropout", 0.1)),
            drop_path_rate=float(m.get("drop_path_rate", 0.0)),
            backbone_kwargs={**(m.get("backbone_kwargs") or {}), **lsk_kwargs(m, str(m.get("variant", "lsknet_t")))},
        )
        lcfg = dict(config.get("loss") or {})
        self.criterion = SegmentationLoss(
            self.coding.ignore_index,
            float(lcfg.get("label_smoothing", 0.05)),
            float(lcfg.get("dice_weight", 1.0)),
            float(lcfg.get("aux_weight", 0.4)),
            str(lcfg.get("averaging", "geoseg")),
        )
        self.exclude = list((config.get("evaluation") or {}).get("exclude") or [])
        for e in self.exclude:
            if isinstance(e, str) and e not in self.class_names:
                raise ConfigError(f"evaluation.exclude: {e!r} is not a class ({', '.join(self.class_names)})")
        k = self.coding.num_classes
        self.confusion = torch.nn.ModuleDict(
            {s: MulticlassConfusionMatrix(k, ignore_index=self.coding.ignore_index) for s in ("val", "test")}
        )
        self.last_metrics: dict[str, Any] = {}

    def load_starting_weights(self, key: str, path: str) -> None:
        """``model.backbone_checkpoint``: backbone weights; ``model.checkpoint``: a whole segmenter (lsknet or
        GeoSeg layout)."""
        from lsknet.models.segmentation import load_backbone, load_segmenter_checkpoint

        if key == "backbone_checkpoint":
            load_backbone(self.model, path)
        else:
            load_segmenter_checkpoint(self.model, path)

    def check_checkpoint(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """A clear error for checkpoints of the UNetFormer head lsknet had before it followed GeoSeg."""
        reject_old_unetformer_layout(state_dict, source, prefix="model.")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` for normalised images ``(B, C, H, W)``."""
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, aux = self.model.forward_with_aux(batch["image"])
        parts = self.criterion(logits, batch["mask"], aux)
        if self.skip_non_finite(parts["loss"], parts):
            return self.skipped_loss()
        n = len(batch["mask"])
        self.log("train/loss", parts["loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        for key in ("loss_ce", "loss_dice", "loss_aux"):
            if key in parts:
                self.log(f"train/{key}", parts[key], on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        return parts["loss"]

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        logits = self.model(batch["image"])
        self.confusion[stage].update(logits.argmax(1), batch["mask"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        cm = self.confusion[stage].compute().cpu().numpy().astype(np.int64)  # synchronised across processes
        self.confusion[stage].reset()
        metrics = metrics_from_confusion(cm, self.class_names, self.exclude)
        for key in ("mIoU", "mF1", "OA"):
            self.log(f"{stage}/{key}", float(metrics[key] or 0.0), prog_bar=key == "mIoU")
        for name, iou in zip(self.class_names, metrics["IoU"]):
            if iou is not None:
                self.log(f"{stage}/IoU/{name}", float(iou))
        self.last_metrics = metrics
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        out = Path(trainer.default_root_dir)
        write_json(dict(metrics, split=stage, epoch=int(self.current_epoch)), out / f"{stage}_metrics.json")
        write_confusion_csv(cm, out / f"{stage}_confusion.csv", self.class_names)
        if trainer.state.fn != "fit":  # the PNG is slow: drawn for final validation / eval only
            plot_confusion_png(cm, out / f"{stage}_confusion.png", self.class_names)


# ------------------------------------------------------------------------------------------------- task contract
def build(cfg: dict[str, Any]) -> tuple[SegmentationTask, SegmentationDataModule]:
    """Module + data module for a ``task: segment`` config."""
    if cfg.get("task") != "segment":
        raise ConfigError(f"expected task: segment, got {cfg.get('task')!r}")
    return SegmentationTask(cfg), SegmentationDataModule(dict(cfg.get("data") or {}))


def predict(
    module: SegmentationTask,
    sources: list[str | Path],
    out_dir: Path,
    window: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    tta: str | None = None,
    outputs: list[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    strict: bool = False,
    bands: str | list[int] | None = None,
    scale: str | tuple[float, float] | None = None,
    formats: str | list[str] | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    skip_existing: bool = False,
    **_: Any,
) -> dict[str, Any]:
    """Sliding-window segmentation of image files / folders into ``out_dir``: per image an index PNG, a colour PNG,
    an overlay and (GeoTIFF input) a georeferenced GeoTIFF. Settings default to the config's ``predict`` section.
    Undecodable images raise, or with ``strict=False`` are skipped with a warning and counted.

    ``formats`` (a comma list, replaces ``outputs``): ``index, color, overlay, geotiff, geojson, gpkg, shp``; the
    vector formats trace class regions as polygons (``min_area`` in CRS units squared, ``simplify`` tolerance in CRS
    units). ``bands``/``scale``: the raster input rule (:mod:`lsknet.inference.geotiff`). ``skip_existing``: images
    whose requested outputs all exist are not redone."""
    import warnings

    from lsknet.errors import DataSkipWarning
    from lsknet.inference.sliding_window import SlidingWindowSegmenter, segment_file

    pcfg = dict(module.config.get("predict") or {})
    dcfg = module.config.get("data") or {}
    seg = SlidingWindowSegmenter(
        module.model,
        window=int(window or pcfg.get("window", 1024)),
        overlap=float(overlap if overlap is not None else pcfg.get("overlap", 0.25)),
        batch_size=int(batch_size or pcfg.get("batch_size", 2)),
        tta=tta or pcfg.get("tta", "none"),
        blend=str(pcfg.get("blend", "gaussian")),
        device=device,
        mean=dcfg.get("mean") or IMAGENET_MEAN,
        std=dcfg.get("std") or IMAGENET_STD,
        input_scale=float(pcfg.get("input_scale", 255.0)),
        progress=progress,
    )
    from lsknet.inference.geotiff import parse_bands, parse_scale

    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    outs = formats or outputs or pcfg.get("outputs") or ["index", "color", "overlay", "geotiff"]
    known = ("index", "color", "overlay", "geotiff", "geojson", "gpkg", "shp")
    if any(o not in known for o in outs):
        raise ConfigError(f"--format: unknown {set(outs) - set(known)}; expected a comma list of {', '.join(known)}")
    out_dir = Path(out_dir)
    results, skipped = [], []
    options = {
        "classes": module.class_names,
        "bands": parse_bands(bands),
        "scale": parse_scale(scale),
        "min_area": float(min_area or 0.0),
        "simplify": float(simplify or 0.0),
    }
    suffix = {"index": ".png", "color": ".png", "overlay": ".png", "geotiff": ".tif", "geojson": ".geojson",
              "gpkg": ".gpkg", "shp": ".shp"}  # fmt: skip
    for path in list_images(sources):
        sub = lambda o: "vectors" if o in ("geojson", "gpkg", "shp") else o  # noqa: E731
        if skip_existing and all((out_dir / sub(o) / f"{Path(path).stem}{suffix[o]}").is_file() for o in outs):
            results.append({"image": str(path), "skipped_existing": True})
            continue
        try:
            written = segment_file(seg, path, out_dir, module.palette, outs, **options)
        except DatasetFormatError as err:
            if strict:
                raise
            warnings.warn(f"skipped {path}: {err}", DataSkipWarning, 2)
            skipped.append(str(path))
            continue
        results.append({"image": str(path), **written})
    summary = {"out_dir": str(out_dir), "images": len(results), "skipped": skipped, "files": results}
    write_json(summary, out_dir / "predictions.json")
    return summary


def demo(
    out_dir: Path, budget_minutes: float = 3.0, seed: int = 0, overrides: list[str] | None = None, **_: Any
) -> dict[str, Any]:
    """Generated scenes -> train LSKNet-T + UNetFormer on CPU -> validate -> sliding-window prediction on larger
    held-out scenes -> scored with :func:`lsknet.evaluation.segmentation.score_directories`. Prints and returns the
    mIoU against chance."""
    from PIL import Image

    from lsknet.config import apply_overrides, load_config
    from lsknet.data.synthetic_segmentation import render_scene, write_scene_set
    from lsknet.evaluation.segmentation import score_directories
    from lsknet.tasks import runner

    out_dir = Path(out_dir)
    cfg = apply_overrides(load_config("demo_segment"), list(overrides or []))
    dcfg = cfg.pop("demo", {}) or {}
    size = int(dcfg.get("image_size", 128))
    write_scene_set(out_dir / "data" / "train", num=int(dcfg.get("train_images", 48)), size=size, seed=seed,
                    color_masks=True)  # fmt: skip
    write_scene_set(out_dir / "data" / "val", num=int(dcfg.get("val_images", 8)), size=size, seed=seed + 1,
                    color_masks=True)  # fmt: skip
    test_dir = out_dir / "test"
    rng = np.random.default_rng(seed + 2)
    for i in range(int(dcfg.get("test_images", 2))):
        image, mask = render_scene(int(dcfg.get("test_size", 320)), rng)
        (test_dir / "images").mkdir(parents=True, exist_ok=True)
        (test_dir / "gt").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(test_dir / "images" / f"test_{i}.png")
        Image.fromarray(mask).save(test_dir / "gt" / f"test_{i}.png")
    cfg["seed"] = seed
    cfg["run_dir"] = str(out_dir / "train")
    cfg["data"]["root"] = str(out_dir / "data")
    max_steps = int(cfg["trainer"].get("max_steps") or 200)
    cfg["trainer"]["max_time"] = {"seconds": int(max(0.5, float(budget_minutes)) * 60 * 0.8)}
    start = time.perf_counter()
    result = runner.train(cfg)
    module = result.module
    module.to("cpu").eval()
    outputs = ["index", "color", "overlay"]
    pred = predict(module, [test_dir / "images"], test_dir / "pred", outputs=outputs, progress=False)
    index_dir = test_dir / "pred" / "index"
    test_metrics, _ = score_directories(index_dir, test_dir / "gt", module.coding.num_classes,
                                        class_names=module.class_names)  # fmt: skip
    val = result.metrics.get("metrics", {})
    k = module.coding.num_classes
    summary = {
        "out_dir": str(out_dir),
        "run_dir": str(result.run_dir),
        "classes": module.class_names,
        "val_mIoU": val.get("val/mIoU"),
        "val_OA": val.get("val/OA"),
        "test_mIoU": test_metrics["mIoU"],
        "test_OA": test_metrics["OA"],
        **_chance_miou(test_dir / "gt", k),
        "steps": int(result.metrics.get("global_step", 0)),
        "max_steps": max_steps,
        "seconds": round(time.perf_counter() - start, 1),
        "best_checkpoint": result.best_checkpoint,
        "predictions": str(test_dir / "pred"),
        "predicted_images": pred["images"],
    }
    write_json(summary, out_dir / "metrics.json")
    print(
        f"segmentation demo: test mIoU {summary['test_mIoU']:.3f} "
        f"(chance: uniform {summary['chance_mIoU_uniform']:.3f}, "
        f"majority class {summary['chance_mIoU_majority']:.3f}), "
        f"val mIoU {float(summary['val_mIoU'] or 0):.3f}, {summary['steps']} steps in {summary['seconds']} s"
    )
    return summary


def _chance_miou(gt_dir: Path, k: int) -> dict[str, float]:
    """Baselines on the ground truth: expected mIoU of a uniformly random labelling (IoU_c = p_c q / (p_c + q - p_c q)
    with q = 1/K, for class share p_c) and mIoU of predicting the majority class everywhere (its share / classes)."""
    from lsknet.evaluation.segmentation import read_index_mask

    counts = np.zeros(k)
    for p in sorted(gt_dir.glob("*.png")):
        m = read_index_mask(p)
        counts += np.bincount(m[m < k].ravel(), minlength=k)[:k]
    share = counts / counts.sum()
    q = 1.0 / k
    present = share[share > 0]
    return {
        "chance_mIoU_uniform": float(np.mean([s * q / (s + q - s * q) for s in present])),
        "chance_mIoU_majority": float(share.max() / len(present)),
    }
