"""Optimizers and learning-rate schedules shared by every task, built from a config's ``optim`` section.

``optim`` keys (all optional except where a schedule needs them):

- ``name``: ``adamw`` (default) or ``sgd``; ``lr``; ``weight_decay``; ``momentum`` (sgd); ``betas`` (adamw).
- ``no_decay_norm_bias`` (default true): no weight decay on 1-d parameters (norms, biases, layer scales);
  ``bias``: only on parameters named ``*bias`` (GeoSeg's ``process_model_params``); false: decay on everything.
- ``backbone_lr_mult`` (default 1): learning rate (and schedule) of ``backbone.*`` parameters times this (GeoSeg 0.1).
- ``lookahead`` (default off): ``{k: 5, alpha: 0.5}`` or true wraps the optimizer in :class:`Lookahead`.
- ``interval``: ``step`` (default) or ``epoch``: stepped once per epoch with torch's own schedulers as GeoSeg
  (``cosine``: ``CosineAnnealingLR(T_max=t_max or max_epochs, eta_min=min_lr)``; ``cosine_restarts``:
  ``CosineAnnealingWarmRestarts(t0, t_mult, eta_min=min_lr)``; ``multistep``; ``constant``; no warmup).
- ``schedule``: ``cosine`` (default), ``multistep``, ``cosine_restarts`` or ``constant``.
- ``warmup_iters`` / ``warmup_epochs`` and ``warmup_ratio`` (start factor, default 1/3): linear warmup.
- ``milestones`` (epochs) and ``gamma`` for ``multistep``; ``min_lr_ratio`` for ``cosine``;
  ``t0`` and ``t_mult`` (epochs) for ``cosine_restarts``.

With ``interval: step`` schedules are stepped every optimizer step, so epoch-based settings are converted with
``steps_per_epoch``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lsknet.errors import ConfigError
from lsknet.tasks.lookahead import Lookahead


def parameter_groups(
    model: nn.Module, weight_decay: float, no_decay_1d: bool | str = True, *, lr: float = 1e-3,
    backbone_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Trainable parameters in groups: decayed / not decayed (``no_decay_1d``: true = 1-d tensors, ``"bias"`` =
    parameters named ``*bias``, false = none), and with ``backbone_lr_mult != 1`` the ``backbone.*`` parameters in
    groups of their own with ``lr * backbone_lr_mult``."""
    rule = str(no_decay_1d).lower() if isinstance(no_decay_1d, str) else ("1d" if no_decay_1d else "none")
    if rule not in ("1d", "bias", "none", "true", "false"):
        raise ConfigError(f"optim.no_decay_norm_bias must be true, false or bias, got {no_decay_1d!r}")
    rule = {"true": "1d", "false": "none"}.get(rule, rule)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (rule == "1d" and param.ndim <= 1) or (rule == "bias" and name.endswith("bias"))
        backbone = backbone_lr_mult != 1.0 and name.startswith("backbone.")
        buckets.setdefault((backbone, exempt), []).append(param)
    groups = []
    for backbone in (False, True):
        for exempt in (False, True):
            params = buckets.get((backbone, exempt))
            if params or (not backbone and not exempt):
                group: dict[str, Any] = {"params": params or [], "weight_decay": 0.0 if exempt else weight_decay}
                if backbone:
                    group["lr"] = lr * backbone_lr_mult
                groups.append(group)
    return groups


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer named by ``optim_cfg['name']`` over ``model``'s trainable parameters."""
    name = str(optim_cfg.get("name", "adamw")).lower()
    lr = float(optim_cfg.get("lr", 1e-3))
    weight_decay = float(optim_cfg.get("weight_decay", 0.05))
    no_decay = optim_cfg.get("no_decay_norm_bias", True)
    mult = float(optim_cfg.get("backbone_lr_mult", 1.0))
    groups = parameter_groups(model, weight_decay, no_decay, lr=lr, backbone_lr_mult=mult)
    if name == "adamw":
        betas = tuple(optim_cfg.get("betas", (0.9, 0.999)))
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    elif name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(optim_cfg.get("momentum", 0.9)), nesterov=True)
    else:
        raise ConfigError(f"unknown optimizer {name!r}; expected adamw or sgd")
    la = optim_cfg.get("lookahead")
    if la:
        la = la if isinstance(la, dict) else {}
        optimizer = Lookahead(optimizer, int(la.get("k", 5)), float(la.get("alpha", 0.5)))
    return optimizer


def epoch_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: dict[str, Any], max_epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch scheduler of ``interval: epoch`` (torch's own classes, as GeoSeg's configs use them)."""
    if optim_cfg.get("warmup_iters") or optim_cfg.get("warmup_epochs"):
        raise ConfigError("optim.interval: epoch has no warmup; remove warmup_iters / warmup_epochs")
    schedule = str(optim_cfg.get("schedule", "cosine")).lower()
    eta_min = float(optim_cfg.get("min_lr", 0.0))
    sched = torch.optim.lr_scheduler
    if schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=int(optim_cfg.get("t_max") or max_epochs), eta_min=eta_min)
    if schedule == "cosine_restarts":
        t0, t_mult = int(optim_cfg.get("t0", 15)), int(optim_cfg.get("t_mult", 2))
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=t_mult, eta_min=eta_min)
    if schedule == "multistep":
        milestones = [int(m) for m in optim_cfg.get("milestones", [])]
        return sched.MultiStepLR(optimizer, milestones, gamma=float(optim_cfg.get("gamma", 0.1)))
    if schedule == "constant":
        return sched.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"unknown schedule {schedule!r}; expected cosine, multistep, cosine_restarts, constant")


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
    interval = str(optim_cfg.get("interval", "step")).lower()
    if interval == "epoch":
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": epoch_scheduler(optimizer, optim_cfg, max_epochs),
                                                         "interval": "epoch"}}  # fmt: skip
    if interval != "step":
        raise ConfigError(f"optim.interval must be step or epoch, got {interval!r}")
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
