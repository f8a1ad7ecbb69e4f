"""Exponential moving average (EMA) of model weights as a Lightning callback, usable by every task.

Built on Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`, which already does the bookkeeping:

- the average is updated after every optimizer step (``every_n_steps`` to thin it out);
- validation runs with the averaged weights (swapped in at the start of each validation epoch, swapped back after),
  so the monitored metric, and therefore the "best" checkpoint, is the EMA model's;
- a checkpoint stores the **EMA weights as its ``state_dict``** (what ``eval`` / ``predict`` / fine-tuning load)
  and the raw training weights under ``current_model_state`` (what ``--resume`` continues from);
- when training ends the model keeps the EMA weights.

Two warm-up rules (``warmup``):

- ``true`` (timm's ModelEmaV2, the LSKNet ImageNet recipe): the decay is ``min(decay, (1 + n) / (10 + n))`` after
  ``n`` updates, so short runs are not dominated by the random initial weights.
- ``"exp"`` (mmdet's ``ExpMomentumEMAHook``, the official LSKNet-S* DOTA run): with momentum ``m = 1 - decay`` the
  update after optimizer step ``k`` (0-based) is ``ema = (1 - mom) * ema + mom * weights`` with
  ``mom = (1 - m) * exp(-(1 + k) / total_iter) + m``, starting from the weights before the first step.

Floating-point buffers (BatchNorm running statistics) are averaged too; integer buffers take the current value
(mmdet's hook averages the whole ``state_dict`` except integer entries the same way).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


def exp_momentum(step: int, momentum: float, total_iter: int) -> float:
    """mmdet ``ExpMomentumEMAHook``'s momentum (weight of the current weights) after optimizer step ``step``
    (0-based): ``(1 - momentum) * exp(-(1 + step) / total_iter) + momentum``."""
    return (1.0 - momentum) * math.exp(-(1.0 + step) / total_iter) + momentum


def _ema_multi_avg_fn(decay: float, warmup: bool | str, total_iter: int, step: dict[str, int]):
    """An in-place ``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`; ``step["idx"]`` is the
    0-based optimizer step of the update (set by the callback)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        if warmup == "exp":
            d = 1.0 - exp_momentum(step["idx"], 1.0 - decay, total_iter)
        else:
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
        decay: the EMA decay per optimizer step (e.g. 0.9998 for long ImageNet-style runs, 0.99 for short ones);
            ``1 - decay`` is mmdet's ``momentum``.
        warmup: ``True``: ramp the decay up from 0.1 as ``(1 + n) / (10 + n)``; ``"exp"``: mmdet's
            ``ExpMomentumEMAHook`` rule over ``total_iter`` steps (see module docstring); ``False``: constant.
        total_iter: the ``"exp"`` rule's time constant in optimizer steps (official LSKNet-S*: 8541 * 12).
        every_n_steps: update after every n-th optimizer step only.
        start_step: first optimizer step (0-based) that updates the average.
    """

    def __init__(
        self,
        decay: float = 0.9998,
        warmup: bool | str = True,
        every_n_steps: int = 1,
        start_step: int = 0,
        total_iter: int = 2000,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if isinstance(warmup, str) and warmup != "exp":
            raise ValueError(f"EMA warmup must be true, false or 'exp', got {warmup!r}")
        if int(total_iter) < 1:
            raise ValueError(f"EMA total_iter must be >= 1, got {total_iter}")
        warmup = warmup if warmup == "exp" else bool(warmup)
        self._step = {"idx": 0}
        avg_fn = _ema_multi_avg_fn(float(decay), warmup, int(total_iter), self._step)
        super().__init__(use_buffers=True, multi_avg_fn=avg_fn)
        self.decay = float(decay)
        self.warmup = warmup
        self.total_iter = int(total_iter)
        self.every_n_steps = max(1, int(every_n_steps))
        self.start_step = int(start_step)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after optimizer steps (never at epoch ends)."""
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.every_n_steps == 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """For the ``"exp"`` rule the average starts from the weights before the first step (mmdet's hook copies them
        at ``before_run``): take them as the first, plain-copy "update" so step ``k``'s update uses momentum(k)."""
        super().on_train_start(trainer, pl_module)
        average = self._average_model
        if self.warmup == "exp" and average is not None and int(average.n_averaged) == 0:
            average.update_parameters(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        self._step["idx"] = trainer.global_step - 1
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

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
        """The callback for a config's ``ema`` section (``enabled``, ``decay``, ``warmup`` (true/false/``exp``),
        ``total_iter``, ``every_n_steps``, ``start_step``), or None when it is absent or disabled."""
        if not ema_cfg or not ema_cfg.get("enabled", False):
            return None
        warmup = ema_cfg.get("warmup", True)
        return cls(
            decay=float(ema_cfg.get("decay", 0.9998)),
            warmup=warmup if warmup == "exp" else bool(warmup),
            total_iter=int(ema_cfg.get("total_iter", 2000)),
            every_n_steps=int(ema_cfg.get("every_n_steps", 1)),
            start_step=int(ema_cfg.get("start_step", 0)),
        )
