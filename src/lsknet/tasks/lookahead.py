"""Lookahead (Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019) around any torch
optimizer, with the step timing of the implementation GeoSeg trains UNetFormer with (catalyst's ``Lookahead``):

- the slow weights are a copy of the fast weights taken after the first inner step;
- every ``k`` inner steps after that (steps 1 + k, 1 + 2k, ... counted from 1) the slow weights move
  ``slow += alpha * (fast - slow)`` and the fast weights are reset to them.

The wrapper shares the inner optimizer's ``param_groups`` (so LR schedulers and gradient clipping act on the inner
optimizer) and keeps a per-group counter ``lookahead_counter`` in them (saved with the inner state).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from lsknet.errors import ConfigError

__all__ = ["Lookahead"]


class Lookahead(Optimizer):
    """``Lookahead(torch.optim.AdamW(params, lr=6e-4), k=5, alpha=0.5)``; use it as the inner optimizer."""

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if int(k) < 1:
            raise ConfigError(f"lookahead k must be >= 1, got {k}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"lookahead alpha must be in [0, 1], got {alpha}")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        super().__init__([{"params": params}], dict(optimizer.defaults))  # sets up torch's hook bookkeeping
        self.optimizer = optimizer
        self.k = int(k)
        self.alpha = float(alpha)
        self.param_groups = optimizer.param_groups  # the very same group dicts as the inner optimizer
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)  # slow weights
        for group in self.param_groups:
            group.setdefault("lookahead_counter", 0)

    @torch.no_grad()
    def _sync(self, group: dict[str, Any]) -> None:
        for fast in group["params"]:
            st = self.state[fast]
            if "slow_param" not in st:
                st["slow_param"] = fast.detach().clone()
            slow = st["slow_param"]
            slow.add_(fast - slow, alpha=self.alpha)
            fast.copy_(slow)

    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        """One inner step, then the Lookahead synchronisation where a group's counter is 0."""
        loss = self.optimizer.step(closure)
        for group in self.param_groups:
            counter = group.setdefault("lookahead_counter", 0)
            if counter == 0:
                self._sync(group)
            group["lookahead_counter"] = (counter + 1) % self.k
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "optimizer"):  # torch's __init__ registering the placeholder group
            super().add_param_group(param_group)
            return
        param_group["lookahead_counter"] = 0
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Inner optimizer state + slow weights by parameter position (groups in order, as torch numbers them)."""
        params = [p for g in self.param_groups for p in g["params"]]
        slow = {i: self.state[p]["slow_param"] for i, p in enumerate(params) if "slow_param" in self.state[p]}
        return {"inner": self.optimizer.state_dict(), "slow": slow, "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if "inner" not in state_dict:
            raise ConfigError("not a Lookahead optimizer state (no 'inner' entry): was it saved without lookahead?")
        self.optimizer.load_state_dict(state_dict["inner"])
        self.param_groups = self.optimizer.param_groups
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = defaultdict(dict)
        for i, tensor in state_dict.get("slow", {}).items():
            p = params[int(i)]
            self.state[p]["slow_param"] = tensor.to(device=p.device, dtype=p.dtype).clone()
