"""Optimizers and learning-rate schedules shared by every task, built from a config's ``optim`` section.

``optim`` keys (all optional except where a schedule needs them):

- ``name``: ``adamw`` (default) or ``sgd``; ``lr``; ``weight_decay``; ``momentum`` (sgd); ``betas`` (adamw).
- ``no_decay_norm_bias`` (default true): no weight decay on 1-d parameters (norms, biases, layer scales).
- ``schedule``: ``cosine`` (default), ``multistep``, ``cosine_restarts`` or ``constant``.
- ``warmup_iters`` / ``warmup_epochs`` and ``warmup_ratio`` (start factor, default 1/3): linear warmup.
- ``milestones`` (epochs) and ``gamma`` for ``multistep``; ``min_lr_ratio`` for ``cosine``;
  ``t0`` and ``t_mult`` (epochs) for ``cosine_restarts``.

Schedules are stepped every optimizer step ("interval": "step"), so epoch-based settings are converted with
``steps_per_epoch``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lsknet.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool = True) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a no-decay group (1-d tensors)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_decay_1d and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer named by ``optim_cfg['name']`` over ``model``'s trainable parameters."""
    name = str(optim_cfg.get("name", "adamw")).lower()
    lr = float(optim_cfg.get("lr", 1e-3))
    weight_decay = float(optim_cfg.get("weight_decay", 0.05))
    groups = parameter_groups(model, weight_decay, bool(optim_cfg.get("no_decay_norm_bias", True)))
    if name == "adamw":
        betas = tuple(optim_cfg.get("betas", (0.9, 0.999)))
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim_cfg.get("momentum", 0.9)), nesterov=True)
    raise ConfigError(f"unknown optimizer {name!r}; expected adamw or sgd")


def lr_factor_fn(optim_cfg: dict[str, Any], steps_per_epoch: int, max_epochs: int):
    """A function ``step -> lr multiplier`` implementing warmup followed by the configured schedule."""
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = max(1, steps_per_epoch * max(1, int(max_epochs)))
    warmup = int(optim_cfg.get("warmup_iters", 0)) or int(float(optim_cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    warmup = min(warmup, total)
    warmup_ratio = float(optim_cfg.get("warmup_ratio", 1.0 / 3.0))
    schedule = str(optim_cfg.get("schedule", "cosine")).lower()

    if schedule == "cosine":
        floor = float(optim_cfg.get("min_lr_ratio", 0.0))

        def after(step: int) -> float:
            progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    elif schedule == "multistep":
        milestones = sorted(int(m) * steps_per_epoch for m in optim_cfg.get("milestones", []))
        gamma = float(optim_cfg.get("gamma", 0.1))

        def after(step: int) -> float:
            return gamma ** sum(step >= m for m in milestones)

    elif schedule == "cosine_restarts":
        t0 = max(1, int(optim_cfg.get("t0", 15)) * steps_per_epoch)
        t_mult = max(1, int(optim_cfg.get("t_mult", 2)))

        def after(step: int) -> float:
            period, start = t0, 0
            while step >= start + period:
                start += period
                period *= t_mult
            return 0.5 * (1.0 + math.cos(math.pi * (step - start) / period))

    elif schedule == "constant":

        def after(step: int) -> float:
            return 1.0

    else:
        raise ConfigError(f"unknown schedule {schedule!r}; expected cosine, multistep, cosine_restarts, constant")

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_ratio + (1.0 - warmup_ratio) * step / warmup
        return after(step)

    return factor


def build_optimization(
    model: nn.Module, optim_cfg: dict[str, Any], steps_per_epoch: int, max_epochs: int
) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns: optimizer + per-step LR scheduler."""
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(optim_cfg, steps_per_epoch, max_epochs))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def optimization_for_trainer(model: nn.Module, optim_cfg: dict[str, Any], trainer: Any) -> dict[str, Any]:
    """``configure_optimizers`` for any task: the schedule length comes from the Lightning ``trainer``.

    ``trainer.estimated_stepping_batches`` honours ``max_epochs``, ``max_steps``, ``limit_train_batches`` and gradient
    accumulation; epochs in the config (warmup, milestones, restarts) are converted with the optimizer steps per epoch.
    """
    total = max(1, int(trainer.estimated_stepping_batches))
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    batches = trainer.num_training_batches
    steps_per_epoch = max(1, math.ceil(batches / accumulate)) if math.isfinite(batches) and batches > 0 else total
    max_epochs = max(1, math.ceil(total / steps_per_epoch))
    return build_optimization(model, optim_cfg, steps_per_epoch, max_epochs)
