"""The classification demo (``lsknet demo --task classify``): a use of the classification task, not part of it.

Generates synthetic aerial scenes, trains LSKNet-T on the CPU within a time budget, evaluates and predicts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsknet.evaluation.classification import write_json
from lsknet.tasks.classification import SceneClassifier, predict, read_predictions

log = logging.getLogger(__name__)


def _estimate_epoch_seconds(cfg: dict[str, Any], n_train: int, n_val: int) -> float:
    """Time a few training steps of the configured model on random data; seconds per training epoch.

    Also picks the faster of 1 thread and the default thread count (small CPU models often run faster on one
    thread, and much faster when other processes share the cores) and keeps it for the run.
    """
    data_cfg = cfg["data"]
    module = SceneClassifier(cfg)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    size, batch = int(data_cfg["image_size"]), int(data_cfg["batch_size"])
    images = torch.randn(batch, 3, size, size)
    targets = torch.randint(0, len(module.classes), (batch,))
    best_threads, per_step = torch.get_num_threads(), float("inf")
    for threads in sorted({1, torch.get_num_threads()}, reverse=True):
        torch.set_num_threads(threads)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            loss = module.criterion(module(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        step = float(np.median(times[1:]))
        if step < per_step:
            best_threads, per_step = threads, step
    torch.set_num_threads(best_threads)
    log.info("demo: %.3f s per training step of %d images with %d thread(s)", per_step, batch, best_threads)
    return per_step * (n_train / batch) + per_step * 0.35 * (n_val / batch) + 0.5


def demo(
    out_dir: Path,
    budget_minutes: float = 3.0,
    seed: int = 0,
    overrides: list[str] | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Generate synthetic aerial scenes, train LSKNet-T on CPU within ``budget_minutes``, evaluate, predict.

    Writes into ``out_dir``: ``data/`` (generated train/val set), ``test_images/`` (a fresh set from another seed),
    ``train/`` (the run folder: checkpoints, logs, confusion matrix), ``predictions.csv`` and ``metrics.json``.
    """
    from lsknet.config import apply_overrides, load_config
    from lsknet.data.synthetic_scenes import SCENE_CLASSES, generate_scene_dataset
    from lsknet.tasks import runner

    out_dir = Path(out_dir)
    cfg = apply_overrides(load_config("demo_classify"), list(overrides or []))
    demo_cfg = cfg.pop("demo", {}) or {}
    per_class, size = int(demo_cfg.get("per_class", 60)), int(demo_cfg.get("image_size", 64))
    data_root = generate_scene_dataset(out_dir / "data", per_class=per_class, size=size, seed=seed)
    test_root = generate_scene_dataset(
        out_dir / "test_images", per_class=int(demo_cfg.get("test_per_class", 10)), size=size, seed=seed + 1000
    )
    cfg["seed"] = seed
    cfg["run_dir"] = str(out_dir / "train")
    cfg["data"]["root"] = str(data_root)
    cfg["data"]["classes"] = sorted(SCENE_CLASSES)
    n_total = per_class * len(SCENE_CLASSES)
    n_train = int(round(per_class * float(cfg["data"].get("train_ratio", 0.8)))) * len(SCENE_CLASSES)
    epoch_seconds = _estimate_epoch_seconds(cfg, n_train, n_total - n_train)
    budget_seconds = max(0.2, float(budget_minutes)) * 60.0 * 0.85
    max_epochs = int(cfg["trainer"].get("max_epochs") or 30)
    epochs = int(min(max_epochs, max(int(demo_cfg.get("min_epochs", 3)), budget_seconds // epoch_seconds)))
    cfg["trainer"]["max_epochs"] = epochs
    cfg["trainer"]["max_time"] = {"seconds": int(float(budget_minutes) * 60 * 1.5) + 30}  # hard stop, generous
    log.info("demo: ~%.1f s per epoch on this machine -> %d epochs", epoch_seconds, epochs)
    start = time.perf_counter()
    result = runner.train(cfg)
    module = result.module
    assert module is not None
    module.to("cpu")
    prediction = predict(module, [test_root], out_dir, topk=3)
    rows = read_predictions(prediction["predictions_csv"])
    correct = sum(Path(row["path"]).parent.name == row["label_1"] for row in rows)
    test_accuracy = correct / max(1, len(rows))
    val = result.metrics.get("metrics", {})
    summary = {
        "out_dir": str(out_dir),
        "run_dir": str(result.run_dir),
        "classes": sorted(SCENE_CLASSES),
        "chance_accuracy": 1.0 / len(SCENE_CLASSES),
        "val_accuracy": val.get("val/acc"),
        "val_top5": val.get("val/acc_top5"),
        "test_accuracy": test_accuracy,
        "num_test_images": len(rows),
        "epochs": epochs,
        "image_size": size,
        "train_images": n_train,
        "seconds": round(time.perf_counter() - start, 1),
        "best_checkpoint": result.best_checkpoint,
        "confusion_matrix_png": str(Path(result.run_dir) / "val_confusion_matrix.png"),
        "predictions_csv": prediction["predictions_csv"],
    }
    write_json(summary, out_dir / "metrics.json")
    summary["metrics_json"] = str(out_dir / "metrics.json")
    print(
        f"classification demo: held-out accuracy {test_accuracy:.3f} on {len(rows)} fresh images "
        f"(val {float(val.get('val/acc') or 0):.3f}, chance {1.0 / len(SCENE_CLASSES):.3f}), "
        f"{epochs} epochs in {summary['seconds']} s"
    )
    return summary
