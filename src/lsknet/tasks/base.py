"""What every task's LightningModule shares: the run config as its only hyper-parameter, one hook that loads the
starting weights when fitting starts, the optimizer and schedule built from the config's ``optim`` section, and one
evaluation hook for the validation and test epochs."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lsknet.errors import LSKNetError
from lsknet.tasks.optim import optimization_for_trainer
from lsknet.tasks.resume import ResumableLoader


class TrainingDiverged(LSKNetError):
    """Raised (on every process) when the loss stays non-finite for ``nan_patience`` consecutive steps."""


log = logging.getLogger(__name__)

# ``model`` keys naming the weights a run starts from (ImageNet backbone, a whole trained model).
STARTING_WEIGHT_KEYS = ("backbone_checkpoint", "checkpoint")


class TaskModule(L.LightningModule):
    """Base of ``SceneClassifier``, ``OrientedDetector`` and ``SegmentationTask``.

    Stores the whole run configuration as the hyper-parameter ``config`` (a checkpoint alone rebuilds the task);
    subclasses set ``self.model`` (random or timm-initialised: no files read), implement
    ``load_starting_weights(key, path)`` for the keys of :data:`STARTING_WEIGHT_KEYS` they take, and
    ``_eval_epoch_end(stage)`` for ``stage`` in ``{"val", "test"}``.

    Lifecycle of the weights: the starting weights named in ``model.backbone_checkpoint`` / ``model.checkpoint`` are
    loaded once, in :meth:`setup` when fitting starts (not when a trained module is rebuilt from its checkpoint for
    eval / predict, which never needs those files, and not when a run resumes: Lightning restores the saved weights).
    """

    model: nn.Module

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = config
        self.nan_patience = int((config.get("trainer") or {}).get("nan_patience") or 5)
        self._nan_streak = 0
        self._skip_update = False
        self._starting_weights_loaded = False

    def skip_non_finite(self, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> bool:
        """True when this step must be skipped because the loss is NaN/inf on this or any other process; the
        training step then returns :meth:`skipped_loss` instead of its loss.

        Under DDP the decision is all-reduced, so every rank skips the same steps together (a rank that skipped
        alone would leave the others waiting for its gradients). A skipped step runs a backward pass of zeros (DDP's
        gradient synchronisation stays in step on every rank) and the optimizer then finds no gradients, so the
        weights and the optimizer state do not change; the global step still counts it. Each skip warns; after
        ``nan_patience`` consecutive skips every rank saves ``checkpoints/diverged.ckpt`` and raises
        :class:`TrainingDiverged`.
        """
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0], device=loss.device)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad)
        if not bad.item():
            self._nan_streak = 0
            return False
        self._nan_streak += 1
        self._skip_update = True
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in (parts or {"loss": loss}).items())
        where = f"on {int(bad.item())} of {trainer.world_size} processes" if trainer and trainer.world_size > 1 else ""
        warnings.warn(
            f"step {self.global_step}: non-finite loss {where} (this process: {shown}); step skipped "
            f"({self._nan_streak}/{self.nan_patience} in a row)",
            RuntimeWarning,
            stacklevel=2,
        )
        if self._nan_streak >= self.nan_patience:
            self._stop_diverged()
        return True

    def skipped_loss(self) -> torch.Tensor:
        """A zero loss that reaches every trainable parameter (gradients of exactly zero, none NaN)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() * 0.0 for p in params]).sum() if params else torch.zeros(())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_update:  # optimizers leave parameters without gradients untouched (no step, no decay)
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self._skip_update = False

    def _stop_diverged(self) -> None:
        trainer = self.trainer
        path = Path(trainer.default_root_dir) / "checkpoints" / "diverged.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # collective under DDP: every rank is here
        raise TrainingDiverged(
            f"training stopped: the loss was NaN/inf for {self._nan_streak} consecutive steps (step "
            f"{self.global_step}); the last good weights are in {path}. Lower optim.lr, enable "
            "trainer.gradient_clip_val, or check the data for degenerate boxes/masks/labels."
        )

    def setup(self, stage: str) -> None:
        if stage != "fit" or self._starting_weights_loaded:
            return
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "ckpt_path", None):
            self._starting_weights_loaded = True  # resuming: the checkpoint's weights replace them anyway
            return
        self.load_starting_weights_from_config()

    def load_starting_weights_from_config(self) -> None:
        """Load every starting-weights file named in the config's ``model`` section (in :data:`STARTING_WEIGHT_KEYS`
        order: backbone first, then a whole model over it), once."""
        model_cfg = self.config.get("model") or {}
        for key in STARTING_WEIGHT_KEYS:
            path = model_cfg.get(key)
            if path:
                self.load_starting_weights(key, str(path))
                log.info("loaded starting weights model.%s=%s", key, path)
        self._starting_weights_loaded = True

    def load_starting_weights(self, key: str, path: str) -> None:
        """Load the file ``path`` named by ``model.<key>`` into ``self.model`` (task-specific)."""
        from lsknet.errors import ConfigError

        raise ConfigError(f"model.{key} is not used by task {self.config.get('task')!r}")

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
    (evaluation; else ``eval_batch``, else ``batch_size``), ``num_workers``. Training loaders are
    :class:`~lsknet.tasks.resume.ResumableLoader`: shuffled from the run's seed (``PL_GLOBAL_SEED``, set by
    ``seed_everything``) and the epoch, resumable mid-epoch, dropping an incomplete last batch when there is more
    than one batch."""
    batch = int(data_cfg.get("batch_size", default_batch))
    if not train:
        batch = int(data_cfg.get("eval_batch_size") or eval_batch or batch)
    workers = int(data_cfg.get("num_workers", 0))
    options: dict[str, Any] = {
        "batch_size": batch,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "collate_fn": collate_fn,
    }
    if train:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0") or 0)
        return ResumableLoader(dataset, seed=seed, drop_last=len(dataset) > batch, **options)  # type: ignore[arg-type]
    return DataLoader(dataset, shuffle=False, **options)
