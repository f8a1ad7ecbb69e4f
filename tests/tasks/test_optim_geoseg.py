"""GeoSeg's UNetFormer optimisation recipe: Lookahead(AdamW), backbone lr 0.1x, no decay on biases only,
per-epoch torch schedulers. Oracles: hand-computed steps, GeoSeg's process_model_params rule re-derived here,
closed-form cosine values."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from lsknet.errors import ConfigError
from lsknet.tasks.lookahead import Lookahead
from lsknet.tasks.optim import build_optimization, build_optimizer


def _scalar_param(value: float = 1.0) -> nn.Parameter:
    return nn.Parameter(torch.tensor([value], dtype=torch.float64))


def _run(opt: torch.optim.Optimizer, p: nn.Parameter, grad: float, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (grad * p).sum().backward()  # constant gradient `grad`
        opt.step()
        out.append(p.item())
    return out


def test_lookahead_sgd_two_steps_by_hand():
    # loss p^2 (gradient 2p), SGD lr 0.1, k=1, alpha=0.5, p0 = 1:
    # step 1: fast 1 - 0.2 = 0.8, slow := 0.8 (first sync copies); step 2: fast 0.8 - 0.16 = 0.64,
    # slow = 0.8 + 0.5 (0.64 - 0.8) = 0.72 and fast := 0.72
    p = _scalar_param(1.0)
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=1, alpha=0.5)
    seen = []
    for _ in range(2):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step()
        seen.append(p.item())
    assert seen == pytest.approx([0.8, 0.72], abs=1e-12)


def test_lookahead_adamw_two_steps_by_hand():
    # constant gradient 3, AdamW lr 0.1, wd 0.01, betas (0.9, 0.999), eps 1e-8, k=1, alpha=0.5, p0 = 1:
    # step 1: p = 1 * (1 - 0.001) - 0.1 * m^/(sqrt(v^)+eps) with m^ = 3, v^ = 9 -> 0.999 - 0.1 * 3 / (3 + 1e-8)
    # step 2: m^ = 0.57 / 0.19 = 3, v^ = 0.017991 / 0.001999 = 9 -> fast = p1 * 0.999 - 0.1 * 3 / (3 + 1e-8);
    #         slow = p1 + 0.5 * (fast - p1)
    step = 0.1 * 3 / (3 + 1e-8)
    p1 = 0.999 - step
    fast2 = p1 * 0.999 - step
    want = [p1, p1 + 0.5 * (fast2 - p1)]
    p = _scalar_param(1.0)
    opt = Lookahead(torch.optim.AdamW([p], lr=0.1, weight_decay=0.01, eps=1e-8), k=1, alpha=0.5)
    assert _run(opt, p, 3.0, 2) == pytest.approx(want, abs=1e-12)
    # k = 2: the second step does not synchronise (GeoSeg: syncs after steps 1, 1 + k, 1 + 2k, ...)
    q = _scalar_param(1.0)
    opt2 = Lookahead(torch.optim.AdamW([q], lr=0.1, weight_decay=0.01, eps=1e-8), k=2, alpha=0.5)
    assert _run(opt2, q, 3.0, 2) == pytest.approx([p1, fast2], abs=1e-12)


def test_lookahead_state_dict_resumes_exactly():
    p = _scalar_param(1.0)
    ref = Lookahead(torch.optim.AdamW([p], lr=0.1), k=3, alpha=0.5)
    full = _run(ref, p, 2.0, 7)
    q = _scalar_param(1.0)
    first = Lookahead(torch.optim.AdamW([q], lr=0.1), k=3, alpha=0.5)
    _run(first, q, 2.0, 4)
    saved = first.state_dict()
    r = nn.Parameter(q.detach().clone())
    second = Lookahead(torch.optim.AdamW([r], lr=0.1), k=3, alpha=0.5)
    second.load_state_dict(saved)
    assert _run(second, r, 2.0, 3) == pytest.approx(full[4:], abs=1e-12)
    with pytest.raises(ConfigError, match="lookahead"):
        Lookahead(torch.optim.SGD([r], lr=0.1), k=0)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.decode_head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False))
        self.decode_head.register_parameter("weights", nn.Parameter(torch.ones(2)))


def test_param_groups_follow_geoseg_process_model_params():
    model = _Tiny()
    cfg = {"name": "adamw", "lr": 6e-4, "weight_decay": 0.01, "backbone_lr_mult": 0.1, "no_decay_norm_bias": "bias",
           "lookahead": {"k": 5, "alpha": 0.5}}  # fmt: skip
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, Lookahead) and isinstance(opt.optimizer, torch.optim.AdamW)
    got = {}
    for group in opt.param_groups:
        for p in group["params"]:
            got[id(p)] = (group["lr"], group["weight_decay"])
    for name, p in model.named_parameters():
        # GeoSeg: layerwise {"backbone.*": lr 6e-5, wd 0.01} by re.match; then weight_decay 0 for names ending "bias"
        lr, wd = (6e-5, 0.01) if re.match("backbone.*", name) else (6e-4, 0.01)
        if name.endswith("bias"):
            wd = 0.0
        assert got[id(p)] == pytest.approx((lr, wd)), name
    # BatchNorm weights and the fusion weights keep their decay under GeoSeg's rule (1-d but not a bias)
    assert got[id(model.backbone[1].weight)][1] == 0.01 and got[id(model.decode_head.weights)][1] == 0.01


def _lrs_per_epoch(cfg: dict, epochs: int) -> list[list[float]]:
    model = _Tiny()
    out = build_optimization(model, cfg, steps_per_epoch=3, max_epochs=epochs)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "epoch"
    seen = []
    for _ in range(epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


def test_loveda_cosine_per_epoch():
    cfg = {"lr": 6e-4, "backbone_lr_mult": 0.1, "no_decay_norm_bias": "bias", "lookahead": True,
           "interval": "epoch", "schedule": "cosine", "t_max": 30, "min_lr": 1e-6}  # fmt: skip
    seen = _lrs_per_epoch(cfg, 30)
    for e, lrs in enumerate(seen):
        cos = (1 + math.cos(math.pi * e / 30)) / 2
        head, backbone = 1e-6 + (6e-4 - 1e-6) * cos, 1e-6 + (6e-5 - 1e-6) * cos
        assert lrs[0] == pytest.approx(head, rel=1e-9) and lrs[-1] == pytest.approx(backbone, rel=1e-9), e


def test_potsdam_warm_restarts_per_epoch():
    cfg = {"lr": 6e-4, "interval": "epoch", "schedule": "cosine_restarts", "t0": 15, "t_mult": 2}
    seen = _lrs_per_epoch(cfg, 45)
    for e, lrs in enumerate(seen):
        t_cur, t_i = (e, 15) if e < 15 else (e - 15, 30)
        assert lrs[0] == pytest.approx(6e-4 * (1 + math.cos(math.pi * t_cur / t_i)) / 2, rel=1e-9, abs=1e-15), e


def test_epoch_interval_rejects_warmup():
    with pytest.raises(ConfigError, match="warmup"):
        build_optimization(_Tiny(), {"interval": "epoch", "warmup_iters": 10}, 3, 5)
