"""Reusable memory for the large temporaries of an inference forward pass.

A fresh tensor of more than a few tens of MB is a fresh ``mmap`` on Linux: every one of its 4 KB pages faults and is
zeroed by the kernel on first touch, which costs about as much as a pass of arithmetic over it (~1 GB of such
faults per 1024 x 1024 Oriented R-CNN forward, ~15 % of the optimized model's time). Inside
``with workspace.active():`` the helpers below hand out buffers kept from the previous pass instead; outside it
they are plain ``torch.empty`` (same results either way: every buffer is fully written before it is read).

- :func:`scratch`: a temporary that is dead when the function that asked for it returns (a transform's tiles,
  a padded copy): one buffer per ``role``, shared by every caller of that role.
- :func:`persistent`: a tensor that outlives its function but not the pass (a feature map read later by
  another stage): one buffer per ``(key, n)`` for the n-th request of ``key`` in the pass, so two live tensors
  never share memory.

The pass's outputs must not alias these buffers (the next pass overwrites them); the models that use a workspace
return freshly computed detections. A :class:`Workspace` is used by one pass at a time (its ``active`` holds a
lock), keeps its buffers between passes (peak memory of a pass is unchanged, the memory stays reserved) and
grows them when a larger input arrives; :meth:`Workspace.clear` gives the memory back.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

__all__ = ["Workspace", "persistent", "scratch"]

_ACTIVE: ContextVar[Workspace | None] = ContextVar("lsknet_workspace", default=None)


class Workspace:
    """Buffers reused from one forward pass to the next (see the module docstring)."""

    def __init__(self) -> None:
        self._buffers: dict[Hashable, Tensor] = {}
        self._counts: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple:  # copies and pickles start empty (a lock cannot be copied)
        return (Workspace, ())

    @contextmanager
    def active(self) -> Iterator[Workspace]:
        """Make this workspace the one :func:`scratch` / :func:`persistent` draw from, for one pass."""
        with self._lock:
            self._counts.clear()
            token = _ACTIVE.set(self)
            try:
                yield self
            finally:
                _ACTIVE.reset(token)

    def clear(self) -> None:
        """Free every buffer."""
        with self._lock:
            self._buffers.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held between passes."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def take(self, key: Hashable, shape: Sequence[int], like: Tensor) -> Tensor:
        """A (contiguous) tensor of ``shape`` with ``like``'s dtype and device, backed by buffer ``key``."""
        numel = 1
        for s in shape:
            numel *= int(s)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            self._buffers.pop(key, None)  # free the old one before allocating the new one
            buf = self._buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel].view(tuple(shape))

    def next_slot(self, key: Hashable) -> int:
        """How many times ``key`` was asked for in this pass before (0 for the first request)."""
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        return n


def _workspace_for(like: Tensor) -> Workspace | None:
    """The active workspace, unless there is none or ``like`` takes part in autograd (fresh tensors then)."""
    ws = _ACTIVE.get()
    return None if ws is None or torch.is_grad_enabled() and like.requires_grad else ws


def scratch(role: str, shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised tensor for a temporary that dies before its function returns (``role`` names the use:
    callers of one role must never hold two of them at once)."""
    ws = _workspace_for(like)
    return like.new_empty(tuple(shape)) if ws is None else ws.take(("scratch", role), shape, like)


def persistent(key: Hashable, shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised tensor that lives until the end of the pass (its own buffer for each request)."""
    ws = _workspace_for(like)
    if ws is None:
        return like.new_empty(tuple(shape))
    return ws.take(("persistent", key, ws.next_slot(key)), shape, like)
