"""Exact resume from any optimizer step: resumable training data, random-state checkpointing, atomic checkpoint files.

A run killed at any moment continues from its latest ``last.ckpt`` and ends with the same weights as a run that
never stopped (bit for bit on the CPU with ``trainer.deterministic=true``). The pieces:

- :class:`ResumableSampler`: the training order is a permutation drawn from ``(seed, epoch)`` alone (sharded over
  the DDP ranks like :class:`~torch.utils.data.DistributedSampler`, which it extends, so Lightning keeps it) and can
  start in the middle of an epoch.
- :class:`SeededSamples`: each training sample's augmentation draws its random numbers from a stream seeded by
  ``(seed, epoch, index)``, so they do not depend on which batches came before, on data-loader workers or on a
  restart; the process-wide random state is left untouched by data loading.
- :class:`ResumableLoader`: a ``DataLoader`` whose ``state_dict`` is the epoch and the batches consumed in it.
- :class:`ResumeStateCallback`: stores that data position and the process-wide random states (torch, CUDA, numpy,
  ``random``; used by dropout, drop-path, the RPN/RoI samplers) in each checkpoint and restores both before the
  first resumed step.
- :class:`AtomicCheckpointIO`: checkpoints are written to a temporary file, flushed to disk, then renamed over the
  old one, so a process killed while writing leaves the previous ``last.ckpt`` intact.
- :func:`periodic_checkpoint`: ``checkpoint.every_n_steps`` / ``checkpoint.every_n_minutes`` -> a
  :class:`~lightning.pytorch.callbacks.ModelCheckpoint` that rewrites ``last.ckpt`` mid-epoch.

Optimizer, scheduler, gradient-scaler and EMA states, the global step and the loop progress are Lightning's own
checkpoint contents.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lsknet.errors import ConfigError

# Mid-epoch ``last.ckpt`` cadence when the config leaves it unset: roughly 30 minutes of work on one GPU.
DEFAULT_EVERY_N_STEPS = {"classify": 10000, "detect": 5000, "segment": 5000}


_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a well-mixed 64-bit integer from any 64-bit integer."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (distinct, well-mixed streams for every (seed, epoch, index))."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ epoch) ^ index) >> 1


class SeededSamples(Dataset):
    """Wrap a map-style dataset so that ``dataset[(seed, epoch, index)]`` runs ``dataset[index]`` with the torch,
    numpy and ``random`` generators seeded from ``(seed, epoch, index)``; the caller's torch state is restored
    afterwards. Other attributes are read through to the wrapped dataset."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int, int] | int) -> Any:
        if not isinstance(key, tuple):  # plain index (e.g. someone inspecting the dataset): no reseeding
            return self.dataset[key]
        seed, epoch, index = key
        sample_seed = _sample_seed(seed, epoch, index)
        torch_state = torch.get_rng_state()  # the model's stream (dropout, samplers): put back afterwards
        try:
            torch.default_generator.manual_seed(sample_seed)  # (torch.manual_seed also seeds GPUs: 1000x slower)
            np.random.seed(sample_seed & 0xFFFFFFFF)  # numpy / random: only augmentations draw from them; they are
            random.seed(sample_seed & 0xFFFFFFFF)  # left on the last sample's stream (cheap; still deterministic)
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)


class ResumableSampler(DistributedSampler):
    """Shuffled training order from ``(seed, epoch)``, sharded over ranks, able to start mid-epoch.

    Yields ``(seed, epoch, index)`` keys for :class:`SeededSamples`. Outside DDP it is one shard (all samples).
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            replicas, rank = 1, 0
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0  # samples of this rank's shard already consumed in ``self.epoch``

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        super().set_epoch(epoch)

    def shard(self) -> list[int]:
        """This rank's indices for the current epoch (before skipping)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        padding = self.total_size - len(order)
        if padding > 0:
            order += (order * math.ceil(padding / max(1, len(order))))[:padding]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:  # type: ignore[override]
        shard, skip = self.shard(), self.skip
        self.skip = 0  # the next pass (next epoch or a re-iteration) starts from the beginning
        epoch = self.epoch
        return iter([(self.seed, epoch, index) for index in shard[skip:]])


class ResumableLoader(DataLoader):
    """The training ``DataLoader``: a :class:`ResumableSampler` over :class:`SeededSamples`, with Lightning's
    stateful-loader protocol. ``len()`` stays the full epoch; after ``load_state_dict`` one pass yields the rest."""

    def __init__(self, dataset: Dataset, seed: int = 0, **kwargs: Any) -> None:
        self._consumed = 0
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))  # worker seeds: not the global stream
        super().__init__(SeededSamples(dataset), sampler=ResumableSampler(dataset, seed), **kwargs)

    def __iter__(self) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._consumed = sampler.skip // max(1, self.batch_size or 1)
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch and number of batches handed out so far in it (Lightning fetches sized loaders without
        prefetching, so this is the number of batches trained on)."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {"epoch": int(sampler.epoch), "batches": int(self._consumed), "seed": int(sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # the epoch was complete: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip = batches * int(self.batch_size or 1)
        self._consumed = batches


def _numpy_state() -> dict[str, Any]:
    """numpy's global state as tensors and numbers (a checkpoint loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss)}


def _random_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    state = states["numpy"]
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _train_loaders(trainer: L.Trainer) -> list[ResumableLoader]:
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [loader for loader in loaders if isinstance(loader, ResumableLoader)]


class ResumeStateCallback(Callback):
    """Store the training data position and the process-wide random states in checkpoints; restore them before
    the first step after a resume.

    (Lightning also keeps stateful loaders' states, but it sets up the training data once before restoring a
    checkpoint, to size the schedule, and then does not apply them; so this callback does it.)
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        loaders = [loader.state_dict() for loader in _train_loaders(trainer)] if trainer is not None else []
        return {"rank_states": _random_states(), "loaders": loaders}  # rank 0's states are the ones written

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending and self._pending.get("loaders"):
            for loader, state in zip(_train_loaders(trainer), self._pending["loaders"]):
                loader.load_state_dict(state)
            self._pending["loaders"] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._pending is not None:
            if self._pending.get("rank_states") is not None:
                _set_random_states(self._pending["rank_states"])
            self._pending = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``<name>.tmp-<pid>``, fsync, then ``os.replace`` onto the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(temp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise


def periodic_checkpoint(cfg: dict[str, Any], dirpath: Path) -> ModelCheckpoint | None:
    """The mid-epoch ``last.ckpt`` writer for the config's ``checkpoint`` section (``every_n_steps``: optimizer
    steps, default per task in :data:`DEFAULT_EVERY_N_STEPS`, 0 disables; ``every_n_minutes``: wall-clock minutes,
    replaces the step cadence when set)."""
    section = cfg.get("checkpoint") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"checkpoint must be a mapping (every_n_steps, every_n_minutes), got {section!r}")
    minutes = section.get("every_n_minutes")
    steps = section.get("every_n_steps", DEFAULT_EVERY_N_STEPS.get(str(cfg.get("task")), 5000))
    try:
        minutes = float(minutes) if minutes is not None else None
        steps = int(steps) if steps is not None else 0
    except (TypeError, ValueError):
        raise ConfigError(
            f"checkpoint.every_n_steps must be an integer and checkpoint.every_n_minutes a number, "
            f"got {section.get('every_n_steps')!r} and {section.get('every_n_minutes')!r}"
        ) from None
    common = {"dirpath": dirpath, "save_top_k": 0, "save_last": True, "enable_version_counter": False}
    if minutes is not None:
        if minutes <= 0:
            raise ConfigError(f"checkpoint.every_n_minutes must be positive, got {minutes}")
        return ModelCheckpoint(train_time_interval=timedelta(minutes=minutes), **common)
    if steps < 0:
        raise ConfigError(f"checkpoint.every_n_steps must be >= 0 (0: only at epoch ends), got {steps}")
    return ModelCheckpoint(every_n_train_steps=steps, **common) if steps else None


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                header = next(csv.reader(handle), [])
            self.metrics_keys = sorted(set(header))


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resumed run in the same folder (rows are appended)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
