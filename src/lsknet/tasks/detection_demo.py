"""``lsknet demo --task detect``: synthetic DOTA data -> LSKNet-T Oriented R-CNN trained from scratch on the CPU
-> held-out DOTA mAP -> tiled prediction on a larger scene.

Steps (all files under ``out_dir``):

1. ``data/train``, ``data/val`` (held-out, another seed) and ``data/scene`` (one large scene) generated with the
   DOTA toolkit's synthetic scene generator, in the real DOTA format;
2. ``train/``: an ordinary lsknet run folder (config, checkpoints, CSV/TensorBoard logs) of the ``demo_detect``
   preset. Training is a fixed, seeded schedule (``trainer.max_epochs`` epochs, warmup + cosine over the steps), so
   the model, and its mAP, do not depend on the machine's speed or load; the expected duration is printed first and
   a progress bar over all steps shows the remaining time. ``budget_minutes`` (``--budget-minutes``) instead stops
   training when its share of a wall-clock budget is spent (:class:`TimeBudget`, a callback: warmup then a cosine
   over the elapsed fraction of that time);
3. ``eval/``: DOTA Task1 detections of the held-out split, ``metrics.json``/``.csv`` (VOC07 mAP), PR curves;
4. ``predictions/``: the large scene predicted with tiling + merge: Task1 files, JSON, drawn PNG, and its mAP;
5. ``metrics.json`` summarising everything; the held-out mAP is printed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lsknet.config import apply_overrides, load_config
from lsknet.data.dota import atomic_write_text, read_labeltxt_dir
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.errors import ConfigError
from lsknet.evaluation.dota import evaluate_dota
from lsknet.inference.predictor import detections_to_task1, write_outputs

log = logging.getLogger(__name__)


class TimeBudget(Callback):
    """Stop training after ``seconds`` of it; meanwhile the learning rate is ``initial lr x factor`` with the factor
    a linear warmup over ``warmup`` steps (from ``warmup_ratio``) times a cosine over the elapsed fraction of the
    budget down to ``floor`` (so the schedule completes whatever the machine's speed). Use with a constant
    scheduler."""

    def __init__(self, seconds: float, warmup: int = 0, warmup_ratio: float = 1.0 / 3.0, floor: float = 0.0) -> None:
        self.seconds, self.warmup, self.warmup_ratio, self.floor = float(seconds), int(warmup), warmup_ratio, floor
        self.start: float | None = None
        self.factor = 1.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        fraction = (time.perf_counter() - self.start) / self.seconds
        if fraction >= 1.0:
            trainer.should_stop = True
        step = trainer.global_step
        warm = 1.0 if step >= self.warmup else self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup
        self.factor = warm * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction))))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"]) * self.factor


class StepProgress(Callback):
    """One progress bar over all training steps of the run (with the remaining time), instead of one per epoch."""

    def __init__(self, total: int) -> None:
        self.total = int(total)
        self.bar: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc="training", unit="step", initial=trainer.global_step, dynamic_ncols=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.bar is not None:
            self.bar.update(trainer.global_step - self.bar.n)
            loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
            if loss is not None:
                self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()


def _evaluate(predictor: Any, images_dir: Path, labels_dir: Path, classes: tuple[str, ...], out: Path) -> Any:
    results = list(predictor.predict([images_dir]))
    write_outputs(results, out, json_file=False, png=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate_dota(detections_to_task1(results, classes), labels_dir, classes=classes)
    report.write_json(out / "metrics.json")
    report.write_csv(out / "metrics.csv")
    report.plot_pr_curves(out / "pr_curves")
    return report, results


def demo_model_section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The demo preset's ``model`` section for detector ``name``: the same backbone settings, and for a detector
    other than Oriented R-CNN its ``demo.heads.<kind>`` overrides instead of the ``rpn`` / ``roi`` keys."""
    from lsknet.models.detectors import split_detector_name

    variant, kind = split_detector_name(name)
    if variant not in ("lsknet_t", "lsknet_s"):
        raise ConfigError(f"--model {name!r}: expected lsknet_{{t,s}}_{{orcnn,roitrans,s2anet,r3det}}")
    section = dict(cfg.get("model") or {})
    section["name"] = name
    if kind != "orcnn":
        section.pop("rpn", None)
        section.pop("roi", None)
        heads = ((cfg.get("demo") or {}).get("heads") or {}).get(kind)
        if heads:
            section["head"] = dict(heads)
    return section


def run_demo(
    out_dir: Path,
    budget_minutes: float | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
    threads: int | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Run the detection demo into ``out_dir`` (see the module docstring): a fixed schedule, or with
    ``budget_minutes`` a wall-clock budget. ``model``: the detector (``lsknet_{t,s}_{orcnn,roitrans,s2anet,r3det}``;
    default the preset's LSKNet-T Oriented R-CNN); other detectors take the preset's ``demo.heads.<kind>``
    settings in place of its Oriented R-CNN ``rpn`` / ``roi`` ones."""
    from lsknet.tasks import runner
    from lsknet.tasks.detection import make_predictor

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    cfg = load_config("demo_detect")
    if model is not None:
        cfg["model"] = demo_model_section(cfg, model)
    cfg = apply_overrides(cfg, list(overrides or []))
    demo_cfg = dict(cfg.pop("demo", {}) or {})
    if threads:
        torch.set_num_threads(int(threads))
    classes = tuple(demo_cfg.get("classes") or ("large-vehicle", "plane", "storage-tank", "tennis-court"))
    size = int(demo_cfg.get("image_size", 256))
    synth = {
        "size": size,
        "classes": classes,
        "objects_per_image": tuple(demo_cfg.get("objects_per_image", (4, 8))),
        "object_scale": tuple(demo_cfg.get("object_scale", (1.0, 1.0))),
        "difficult_fraction": float(demo_cfg.get("difficult_fraction", 0.0)),
        "truncated_fraction": float(demo_cfg.get("truncated_fraction", 0.05)),
        "dense_probability": float(demo_cfg.get("dense_probability", 0.0)),
    }
    data = out_dir / "data"
    generate_dota_scenes(data / "train", num_images=int(demo_cfg.get("train_images", 96)), seed=seed, **synth)
    generate_dota_scenes(data / "val", num_images=int(demo_cfg.get("val_images", 24)), seed=seed + 1000, **synth)
    scene_size = int(demo_cfg.get("scene_size", 3 * size))
    scene_objects = tuple(int(v * (scene_size / size) ** 2) for v in synth["objects_per_image"])
    generate_dota_scenes(
        data / "scene",
        num_images=1,
        seed=seed + 2000,
        **{**synth, "size": scene_size, "objects_per_image": scene_objects},
    )
    data_seconds = time.perf_counter() - t0

    cfg["seed"] = seed
    cfg["run_dir"] = str(out_dir / "train")
    cfg["data"].update(train_root=str(data / "train"), val_root=None, classes=list(classes), image_size=size)
    train_images = int(demo_cfg.get("train_images", 96))
    batch = int(cfg["data"].get("batch_size", 2))
    callbacks: list[Callback] = []
    budget = None
    if budget_minutes is not None:
        budget = max(0.5, float(budget_minutes)) * 60.0
        reserve = max(float(demo_cfg.get("reserve_seconds", 45.0)), 0.12 * budget)
        train_budget = max(10.0, budget - reserve - (time.perf_counter() - t0) - 10.0)
        optim_cfg = cfg["optim"]
        callbacks.append(
            TimeBudget(
                train_budget,
                warmup=int(optim_cfg.get("warmup_iters", 0)),
                warmup_ratio=float(optim_cfg.get("warmup_ratio", 1.0 / 3.0)),
                floor=float(optim_cfg.get("min_lr_ratio", 0.0)),
            )
        )
        cfg["optim"].update(schedule="constant", warmup_iters=0)  # the callback drives the learning rate
        cfg["trainer"].update(max_epochs=100000, max_steps=-1)
        plan = f"for {train_budget / 60:.1f} min (--budget-minutes {budget_minutes:g})"
    else:
        steps_per_epoch = max(1, train_images // batch) if train_images > batch else 1
        total_steps = int(cfg["trainer"].get("max_steps") or -1)
        if total_steps <= 0:
            total_steps = steps_per_epoch * int(cfg["trainer"]["max_epochs"])
        callbacks.append(StepProgress(total_steps))
        cfg["trainer"]["enable_progress_bar"] = False  # StepProgress shows one bar over all steps
        expected = total_steps * float(demo_cfg.get("seconds_per_step", 1.6)) + 40.0
        plan = (
            f"for a fixed {total_steps} steps; expected about {expected / 60:.0f} min on an idle 2-core CPU "
            "(the bar below shows the remaining time on this machine)"
        )
    log.info("detect demo: %s", plan)
    print(
        f"detection demo: {len(classes)} classes, {size}px images; training {cfg['model'].get('name')} from scratch "
        f"on {torch.get_num_threads()} thread(s) {plan}",
        flush=True,
    )
    t_train = time.perf_counter()
    result = runner.train(cfg, callbacks=callbacks)
    train_seconds = time.perf_counter() - t_train
    module = result.module
    assert module is not None
    module.to("cpu").eval()
    steps = int(result.metrics.get("global_step", 0)) if result.metrics else 0

    t_eval = time.perf_counter()
    predictor = make_predictor(module, overlap=size // 4, batch_size=4)
    report, _ = _evaluate(predictor, data / "val" / "images", data / "val" / "labelTxt", classes, out_dir / "eval")
    eval_seconds = time.perf_counter() - t_eval

    t_pred = time.perf_counter()
    scene_results = list(predictor.predict([data / "scene" / "images"], progress=False))
    written = write_outputs(scene_results, out_dir / "predictions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene_report = evaluate_dota(
            detections_to_task1(scene_results, classes),
            read_labeltxt_dir(data / "scene" / "labelTxt", classes),
            classes,
        )
    predict_seconds = time.perf_counter() - t_pred
    total = time.perf_counter() - t0
    summary = {
        "out_dir": str(out_dir),
        "mAP_voc07": round(float(report.mAP), 4),
        "per_class_AP": {k: (None if v is None else round(float(v), 4)) for k, v in report.per_class.items()},
        "mAP_50_95": None if report.mAP_50_95 is None else round(float(report.mAP_50_95), 4),
        "scene_mAP_voc07": round(float(scene_report.mAP), 4),
        "scene_tiles": int(scene_results[0].extra.get("num_tiles", 1)) if scene_results else 0,
        "classes": list(classes),
        "image_size": size,
        "train_images": train_images,
        "val_images": int(demo_cfg.get("val_images", 24)),
        "train_steps": steps,
        "seconds": {
            "data": round(data_seconds, 1),
            "train": round(train_seconds, 1),
            "eval": round(eval_seconds, 1),
            "predict": round(predict_seconds, 1),
            "total": round(total, 1),
        },
        "budget_seconds": None if budget is None else round(budget, 1),
        "run_dir": str(result.run_dir),
        "last_checkpoint": result.last_checkpoint,
        "eval_dir": str(out_dir / "eval"),
        "predictions_dir": str(out_dir / "predictions"),
        "drawn_scene": (written.get("png_files") or [None])[0],
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"detection demo: held-out VOC07 mAP {report.mAP:.3f} on {summary['val_images']} images "
        f"({steps} training steps), large scene mAP {scene_report.mAP:.3f} over {summary['scene_tiles']} tiles; "
        f"total {total / 60:.1f} min; results in {out_dir}",
        flush=True,
    )
    return summary
