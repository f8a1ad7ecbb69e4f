"""What every task's LightningModule shares: the run config as its only hyper-parameter, the optimizer and schedule
built from the config's ``optim`` section, and one evaluation hook for the validation and test epochs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lsknet.tasks.optim import optimization_for_trainer


class TaskModule(L.LightningModule):
    """Base of ``SceneClassifier``, ``OrientedDetector`` and ``SegmentationTask``.

    Stores the whole run configuration as the hyper-parameter ``config`` (a checkpoint alone rebuilds the task);
    subclasses set ``self.model`` and implement ``_eval_epoch_end(stage)`` for ``stage`` in ``{"val", "test"}``.
    """

    model: nn.Module

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = config

    def _eval_epoch_end(self, stage: str) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        return optimization_for_trainer(self.model, self.config.get("optim") or {}, self.trainer)


def make_loader(
    dataset: Dataset,
    data_cfg: dict[str, Any],
    train: bool,
    default_batch: int,
    collate_fn: Callable | None = None,
    eval_batch: int | None = None,
) -> DataLoader:
    """The DataLoader every task uses, from its ``data`` section: ``batch_size`` (training), ``eval_batch_size``
    (evaluation; else ``eval_batch``, else ``batch_size``), ``num_workers``; shuffled, dropping an incomplete last
    batch when training on more than one batch."""
    batch = int(data_cfg.get("batch_size", default_batch))
    if not train:
        batch = int(data_cfg.get("eval_batch_size") or eval_batch or batch)
    workers = int(data_cfg.get("num_workers", 0))
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=train,
        drop_last=train and len(dataset) > batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_fn,
    )
