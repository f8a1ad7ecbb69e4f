"""Exponential moving average (EMA) of model weights as a Lightning callback, usable by every task.

Built on Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`, which already does the bookkeeping:

- the average is updated after every optimizer step (``every_n_steps`` to thin it out);
- validation runs with the averaged weights (swapped in at the start of each validation epoch, swapped back after),
  so the monitored metric, and therefore the "best" checkpoint, is the EMA model's;
- a checkpoint stores the **EMA weights as its ``state_dict``** (what ``eval`` / ``predict`` / fine-tuning load)
  and the raw training weights under ``current_model_state`` (what ``--resume`` continues from);
- when training ends the model keeps the EMA weights.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in timm's ModelEmaV2 and the
LSKNet ImageNet recipe), so short runs are not dominated by the random initial weights. Floating-point buffers
(BatchNorm running statistics) are averaged too; integer buffers take the current value.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


def _ema_multi_avg_fn(decay: float, warmup: bool):
    """An in-place ``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(cur)

    return update


class EMACallback(WeightAveraging):
    """Keep an EMA of the LightningModule's parameters and buffers (see module docstring).

    Args:
        decay: the EMA decay per optimizer step (e.g. 0.9998 for long ImageNet-style runs, 0.99 for short ones).
        warmup: ramp the decay up from 0.1 as ``(1 + n) / (10 + n)``.
        every_n_steps: update after every n-th optimizer step only.
        start_step: first optimizer step (0-based) that updates the average.
    """

    def __init__(self, decay: float = 0.9998, warmup: bool = True, every_n_steps: int = 1, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        super().__init__(use_buffers=True, multi_avg_fn=_ema_multi_avg_fn(float(decay), bool(warmup)))
        self.decay = float(decay)
        self.every_n_steps = max(1, int(every_n_steps))
        self.start_step = int(start_step)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after optimizer steps (never at epoch ends)."""
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.every_n_steps == 0

    # Lightning's WeightAveraging also swaps weights in trainer.validate()/test() after fit and, when such a call
    # loads a checkpoint, puts the raw training weights back. Evaluation must see the checkpoint's EMA weights, so
    # both happen only while fitting.
    def _fitting(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._fitting(trainer):
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    @classmethod
    def from_config(cls, ema_cfg: dict[str, Any] | None) -> EMACallback | None:
        """The callback for a config's ``ema`` section (``enabled``, ``decay``, ``warmup``, ``every_n_steps``,
        ``start_step``), or None when it is absent or disabled."""
        if not ema_cfg or not ema_cfg.get("enabled", False):
            return None
        return cls(
            decay=float(ema_cfg.get("decay", 0.9998)),
            warmup=bool(ema_cfg.get("warmup", True)),
            every_n_steps=int(ema_cfg.get("every_n_steps", 1)),
            start_step=int(ema_cfg.get("start_step", 0)),
        )
