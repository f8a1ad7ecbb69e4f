"""What every task's LightningModule shares: the run config as its only hyper-parameter, the optimizer and schedule
built from the config's ``optim`` section, and one evaluation hook for the validation and test epochs."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

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
