"""Robustness to degraded imagery: a trained checkpoint evaluated on the clean and corrupted evaluation split.

The evaluation is the task's own (the same Lightning validation/test loop as ``lsknet eval``: top-1 accuracy for
classification, DOTA mAP for detection, mIoU for segmentation); only the decoded evaluation images pass through
:func:`lsknet.data.corruptions.corrupt` first (the datasets' ``image_hook``). Labels, boxes and masks are unchanged.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsknet.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from lsknet.errors import ConfigError

__all__ = ["METRIC_NAMES", "plot_robustness", "run_robustness"]

log = logging.getLogger(__name__)
METRIC_NAMES = {"classify": "top-1", "detect": "DOTA mAP", "segment": "mIoU"}


def _set_hook(datamodule: Any, split: str, hook: Any) -> None:
    dataset = (getattr(datamodule, "datasets", None) or {}).get(split)
    if dataset is None:
        raise ConfigError(f"the checkpoint's data has no {split} split (set data.{split}_root or data.root)")
    dataset.image_hook = hook
    cache = getattr(dataset, "_cache", None)  # the segmentation dataset caches decoded images
    if cache is not None:
        cache.clear()


def run_robustness(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    split: str = "val",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (an lsknet training checkpoint of any task, with ``overrides`` such as
    ``data.val_root=...``) on the clean ``split`` and on every corruption x severity.

    Returns ``{"metric": name, "key": logged key, "clean": value, "results": [{"corruption", "severity", "value"}],
    "mean_relative": mean of value / clean over the results}``.
    """
    import lightning as L
    from tqdm import tqdm

    from lsknet.tasks import runner

    names = list(corruptions) if corruptions else list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if int(s) not in SEVERITIES]
    if bad or not severities:
        raise ConfigError(f"severities must be among 1..5, got {list(severities)}")
    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r}; expected val or test")
    module, datamodule, cfg = runner.load_module(checkpoint, list(overrides))
    task = str(cfg["task"])
    key = str((cfg.get("trainer") or {}).get("monitor") or "").replace("val/", f"{split}/")
    if not key:
        raise ConfigError(f"{checkpoint}: the stored config names no trainer.monitor metric")
    cfg = dict(cfg)
    cfg["trainer"] = dict(cfg.get("trainer") or {}, enable_progress_bar=False, enable_model_summary=False)
    datamodule.setup("validate" if split == "val" else "test")
    scratch = Path(tempfile.mkdtemp(prefix="lsknet-robustness-"))
    L.seed_everything(seed, verbose=False)

    def evaluate(hook: Any) -> float:
        _set_hook(datamodule, split, hook)
        folder = scratch / str(len(list(scratch.iterdir())))  # one fresh folder per evaluation (reports, CSV logs)
        trainer = runner.build_trainer(cfg, folder, training=False)
        run = trainer.validate if split == "val" else trainer.test
        results = run(module, datamodule=datamodule, verbose=False)
        metrics = results[0] if results else {}
        if key not in metrics:
            raise ConfigError(f"the {task} evaluation logged no {key!r} (got {sorted(metrics)})")
        return float(metrics[key])

    jobs = [(n, int(s)) for n in names for s in severities]
    results = []
    try:
        bar = tqdm(total=len(jobs) + 1, desc="robustness", unit="eval", disable=not progress)
        bar.set_postfix_str("clean")
        clean = evaluate(None)
        bar.update()
        for name, severity in jobs:
            bar.set_postfix_str(f"{name} {severity}")
            hook = functools.partial(corrupt, name=name, severity=severity, seed=seed)
            results.append({"corruption": name, "severity": severity, "value": evaluate(hook)})
            bar.update()
        bar.close()
    finally:
        _set_hook(datamodule, split, None)
        shutil.rmtree(scratch, ignore_errors=True)
    relative = [r["value"] / clean for r in results] if clean else []
    return {
        "task": task,
        "metric": METRIC_NAMES.get(task, key),
        "key": key,
        "checkpoint": str(checkpoint),
        "split": split,
        "seed": seed,
        "clean": clean,
        "results": results,
        "mean_relative": sum(relative) / len(relative) if relative else None,
    }


def plot_robustness(report: dict[str, Any], path: str | Path) -> Path:
    """Metric vs severity, one line per corruption, the clean value as a dashed line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lsknet.analysis.common import save_figure

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    by_name: dict[str, list[tuple[int, float]]] = {}
    for r in report["results"]:
        by_name.setdefault(r["corruption"], []).append((r["severity"], r["value"]))
    for name, points in by_name.items():
        points.sort()
        ax.plot([0] + [p[0] for p in points], [report["clean"]] + [p[1] for p in points], marker="o", ms=3, label=name)
    ax.axhline(report["clean"], color="black", ls="--", lw=0.8, label="clean")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(report["metric"])
    ax.set_xticks(range(0, 6))
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    rel = report["mean_relative"]
    ax.set_title(f"{report['task']}: mean relative {'n/a' if rel is None else f'{rel:.3f}'}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
