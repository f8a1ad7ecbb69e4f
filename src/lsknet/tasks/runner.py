"""Training / evaluation runs for every task: a Lightning ``Trainer`` built from a config, run folders, final metrics.

One run = one folder (printed at the start and at the end)::

    <run_dir>/config.yaml            the full resolved configuration
    <run_dir>/checkpoints/best.ckpt  best by ``trainer.monitor`` (``trainer.mode`` max|min)
    <run_dir>/checkpoints/last.ckpt  every ``checkpoint.every_n_steps`` steps (or ``every_n_minutes``) and epoch end;
                                     what ``--resume`` continues from, in this same folder (see tasks/resume.py)
    <run_dir>/logs/csv/metrics.csv   CSVLogger;  <run_dir>/logs/tensorboard/  TensorBoardLogger
    <run_dir>/metrics.json           final metrics: a validation pass with the best checkpoint
    ... plus the task's own files (classification: val_confusion_matrix.{csv,png}, val_metrics.json)

The ``trainer`` section is passed to :class:`lightning.pytorch.Trainer` except these runner keys:
``monitor`` (metric name, e.g. ``val/acc``), ``mode`` (``max``/``min``), ``save_top_k`` (default 1),
``progress_refresh_rate`` (default 10), ``tensorboard`` (default true), ``nan_patience`` (consecutive non-finite
losses skipped, on all processes together, before training stops; default 5). A top-level ``ema`` section enables
:class:`lsknet.tasks.ema.EMACallback`. Unknown trainer keys are a :class:`~lsknet.errors.ConfigError`.

Multi-process (DDP): set ``trainer.strategy=ddp trainer.devices=N [trainer.num_nodes=M]``. Either let Lightning
start the N processes itself (``lsknet train CFG trainer.strategy=ddp trainer.devices=2``), or start them with
``torchrun`` (Lightning detects the torchelastic environment)::

    torchrun --standalone --nproc_per_node 2 -m lsknet.cli.main train CFG trainer.strategy=ddp trainer.devices=2
    # node k of 2 (same command on each node, k = 0, 1; same --rdzv-id so all ranks agree on the run folder):
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint HOST0:29400 --rdzv-id job42 \
        -m lsknet.cli.main train CFG trainer.strategy=ddp trainer.devices=4 trainer.num_nodes=2

Under torchrun, ``devices``/``num_nodes``/``strategy`` left at ``auto`` are filled in from the environment.
All processes must agree on the run folder: it is ``run_dir`` when set, else ``runs/<name>/<launch id>`` where the
launch id is the torchrun rendezvous id or the SLURM job id (a multi-process launch without either needs
``run_dir=PATH``).

The task (see :mod:`lsknet.tasks`) writes its own files into ``trainer.default_root_dir`` (= the run folder) on
global rank 0.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from lsknet.config import apply_overrides, dump_config
from lsknet.data.dota import check_file_name
from lsknet.errors import CheckpointError, ConfigError
from lsknet.evaluation.classification import write_json
from lsknet.models.checkpoint import check_state_dict, load_checkpoint_file
from lsknet.tasks import get_task
from lsknet.tasks.ema import EMACallback
from lsknet.tasks.resume import AppendingCSVLogger, AtomicCheckpointIO, ResumeStateCallback, periodic_checkpoint

log = logging.getLogger(__name__)

RUNNER_KEYS = ("monitor", "mode", "save_top_k", "progress_refresh_rate", "tensorboard", "nan_patience")
_RUN_DIR_ENV = "LSKNET_RUN_DIR"  # "<pid>:<path>": passed to the processes Lightning's DDP launcher starts


@dataclass
class RunResult:
    """What :func:`train` returns (on every process of a multi-process run)."""

    run_dir: Path
    best_checkpoint: str | None
    last_checkpoint: str | None
    metrics: dict[str, Any]
    module: L.LightningModule | None = field(default=None, repr=False)
    trainer: L.Trainer | None = field(default=None, repr=False)


class _ProgressBar(TQDMProgressBar):
    """The TQDM bar without Lightning's ``v_num`` (our loggers use fixed version names)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def _single_log_lines() -> None:
    """Lightning adds its own console handler; when the root logger already prints (the CLI configures it),
    stop Lightning's records from propagating so every line appears once."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_log = logging.getLogger(name)
            if lightning_log.handlers:
                lightning_log.propagate = False


def _say(message: str) -> None:
    """Print a line on global rank 0 only (stderr, so stdout stays clean for --print-config and pipes)."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    if all((os.environ.get(name) or "0") == "0" for name in ranks):
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# run folders


def resolve_run_dir(cfg: dict[str, Any], kind: str = "") -> Path:
    """The run folder, identical on every process of a launch (see module docstring). ``kind`` prefixes the stamp."""
    if cfg.get("run_dir"):
        return Path(cfg["run_dir"])
    inherited = os.environ.get(_RUN_DIR_ENV, "")
    if inherited:
        pid, _, path = inherited.partition(":")
        if pid != str(os.getpid()):  # we were started by Lightning's launcher from the process that chose it
            return Path(path)
    name = check_file_name(str(cfg.get("name") or cfg.get("task") or "run"), "run name (config 'name')")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if world > 1 or slurm_tasks > 1:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
        if run_id and run_id != "none":
            stamp = f"torchrun-{run_id[:12]}"
        elif os.environ.get("SLURM_JOB_ID"):
            stamp = f"slurm-{os.environ['SLURM_JOB_ID']}"
        else:
            raise ConfigError(
                "multi-process launch without a shared launch id (torchrun --rdzv-id or SLURM): "
                "pass run_dir=PATH, the same for every process"
            )
        path = Path("runs") / name / f"{kind}{stamp}"
    else:
        base = Path("runs") / name / f"{kind}{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            path, n = Path(f"{base}-{n}"), n + 1
    os.environ[_RUN_DIR_ENV] = f"{os.getpid()}:{path}"
    return path


def resume_run_dir(checkpoint_path: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/x.ckpt`` -> ``RUN``): a resumed run continues
    there (config rewritten, CSV/TensorBoard logs appended, metrics.json replaced). A checkpoint outside a run
    folder (None here) resumes into a new folder."""
    path = Path(checkpoint_path)
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        os.environ[_RUN_DIR_ENV] = f"{os.getpid()}:{path.parent.parent}"
        return path.parent.parent
    return None


# ---------------------------------------------------------------------------------------------------------------------
# trainer


def _torchelastic_defaults(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill ``devices``/``num_nodes``/``strategy`` left at auto from a torchrun environment."""
    out = dict(trainer_cfg)
    local = os.environ.get("LOCAL_WORLD_SIZE")
    world = os.environ.get("WORLD_SIZE")
    if not (os.environ.get("TORCHELASTIC_RUN_ID") and local and world):
        return out
    local_n, world_n = int(local), int(world)
    if out.get("devices") in (None, "auto"):
        out["devices"] = local_n
    if out.get("num_nodes") in (None, "auto", 1) and world_n > local_n:
        out["num_nodes"] = world_n // local_n
    if out.get("strategy") in (None, "auto") and world_n > 1:
        out["strategy"] = "ddp"
    return out


def trainer_kwargs(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's ``trainer`` section minus runner keys and nulls, checked against ``Trainer``'s arguments."""
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "callbacks", "logger", "plugins"}
    kwargs = {}
    for key, value in _torchelastic_defaults(trainer_cfg).items():
        if key in RUNNER_KEYS or value is None:
            continue
        if key not in allowed:
            raise ConfigError(
                f"unknown trainer option trainer.{key}; Lightning Trainer accepts: {', '.join(sorted(allowed))}"
            )
        kwargs[key] = value
    return kwargs


def sync_batchnorm_possible(kwargs: dict[str, Any]) -> bool:
    """SyncBatchNorm needs CUDA modules: True when the Trainer ``kwargs`` select a GPU (``auto`` with CUDA present)."""
    accelerator = str(kwargs.get("accelerator") or "auto").lower()
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def build_trainer(
    cfg: dict[str, Any], run_dir: Path, training: bool = True, extra_callbacks: list[Callback] | None = None
) -> L.Trainer:
    """A Trainer for ``cfg`` writing into ``run_dir``.

    ``training``: checkpoints (best + last), EMA (if enabled), learning-rate monitor, CSV + TensorBoard loggers.
    Otherwise (evaluation): only the progress bar and a CSV logger.
    """
    _single_log_lines()
    trainer_cfg = dict(cfg.get("trainer") or {})
    kwargs = trainer_kwargs(trainer_cfg)
    if kwargs.get("sync_batchnorm") and not sync_batchnorm_possible(kwargs):
        log.info("trainer.sync_batchnorm ignored: SyncBatchNorm needs GPUs (BatchNorm stays per process on CPU)")
        kwargs["sync_batchnorm"] = False
    callbacks: list[Callback] = list(extra_callbacks or [])
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(_ProgressBar(refresh_rate=int(trainer_cfg.get("progress_refresh_rate") or 10)))
    loggers: list[Any] = [AppendingCSVLogger(run_dir, name="logs", version="csv" if training else "eval_csv")]
    if training:
        monitor = trainer_cfg.get("monitor")
        mode = str(trainer_cfg.get("mode") or "max")
        if mode not in ("max", "min"):
            raise ConfigError(f"trainer.mode must be max or min, got {mode!r}")
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor=monitor,
                mode=mode,
                save_top_k=int(trainer_cfg.get("save_top_k", 1)) if monitor else 0,
                save_last=True,
                auto_insert_metric_name=False,
                enable_version_counter=False,  # a resumed run rewrites best.ckpt / last.ckpt in its own folder
            )
        )
        periodic = periodic_checkpoint(cfg, run_dir / "checkpoints")
        if periodic is not None:
            callbacks.append(periodic)
        callbacks.append(ResumeStateCallback())
        ema = EMACallback.from_config(cfg.get("ema"))
        if ema is not None:
            callbacks.append(ema)
        if trainer_cfg.get("tensorboard", True):
            loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    else:
        kwargs["max_epochs"] = kwargs.get("max_epochs", 1)
    kwargs.setdefault("enable_model_summary", training)
    try:
        return L.Trainer(
            default_root_dir=str(run_dir),
            callbacks=callbacks,
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            **kwargs,
        )
    except (ValueError, TypeError) as err:  # Lightning's own argument checks (e.g. devices=3 on a 2-GPU box)
        raise ConfigError(f"bad trainer settings: {err}") from None
    except Exception as err:
        if type(err).__name__ == "MisconfigurationException":
            raise ConfigError(f"bad trainer settings: {err}") from None
        raise


def _save_config(cfg: dict[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    temp = run_dir / ".config.yaml.tmp"
    temp.write_text(dump_config(cfg))
    os.replace(temp, run_dir / "config.yaml")


def _is_global_zero(trainer: L.Trainer) -> bool:
    return bool(trainer.is_global_zero)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints


def read_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint with the one safe reader (:func:`~lsknet.models.checkpoint.load_checkpoint_file`);
    CheckpointError if missing, unreadable or without ``state_dict``."""
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def checkpoint_config(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run configuration stored in an lsknet training checkpoint (``hyper_parameters.config``)."""
    checkpoint = checkpoint if checkpoint is not None else read_lightning_checkpoint(path)
    cfg = (checkpoint.get("hyper_parameters") or {}).get("config")
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise CheckpointError(
            f"{path}: not an lsknet training checkpoint (no stored config); "
            "to start from backbone weights use model.checkpoint=PATH in a training config"
        )
    return cfg


def check_state_dict_fits(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming missing / unexpected / mis-shaped keys (e.g. an lsknet_s checkpoint for lsknet_t);
    the fit check of :func:`~lsknet.models.checkpoint.load_state_dict_checked`, without loading. A task may first
    reject a known old layout with a specific message (``module.check_checkpoint``)."""
    if hasattr(module, "check_checkpoint"):
        module.check_checkpoint(state_dict, source)
    name = getattr(module, "config", {}).get("model", {}).get("name", type(module).__name__)
    check_state_dict(module, state_dict, source=source, what=f"model {name}", hint="(wrong variant or task?)")


# ``model`` keys naming weights a run starts from (not needed to rebuild a trained checkpoint).
STARTING_WEIGHT_KEYS = ("checkpoint", "backbone_checkpoint")


def _without_starting_weights(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` for rebuilding a trained network: the starting weights it names are not needed."""
    build_cfg = copy.deepcopy(cfg)
    for key in STARTING_WEIGHT_KEYS:
        if isinstance(build_cfg.get("model"), dict) and build_cfg["model"].get(key):
            build_cfg["model"][key] = None
    return build_cfg


def load_module(
    checkpoint_path: str | Path, overrides: list[str] | None = None, build_data: bool = True
) -> tuple[L.LightningModule, L.LightningDataModule | None, dict[str, Any]]:
    """Rebuild a task's module (+ data module) from an lsknet checkpoint, apply ``overrides``, load the weights.

    The checkpoint's ``state_dict`` holds the EMA weights when EMA was enabled. Returns (module, datamodule, cfg).
    An ``lsknet export`` ONNX file (``.onnx``) gives the module of its stored config with ``module.model`` replaced
    by the onnxruntime runtime (:func:`lsknet.inference.onnx_runtime.load_onnx`).
    """
    if Path(checkpoint_path).suffix.lower() == ".onnx":
        return _load_onnx_module(checkpoint_path, overrides, build_data)
    checkpoint = read_lightning_checkpoint(checkpoint_path)
    cfg = apply_overrides(checkpoint_config(checkpoint_path, checkpoint), list(overrides or []))
    # The trained weights come from this checkpoint: the starting weights named in the config (which may not exist on
    # this machine) are not needed to rebuild the network.
    module, datamodule = get_task(cfg["task"]).build(_without_starting_weights(cfg))
    state_dict = checkpoint["state_dict"]
    check_state_dict_fits(module, state_dict, str(checkpoint_path))
    module.load_state_dict(state_dict)
    module.eval()
    return module, (datamodule if build_data else None), cfg


def _wants_optimized(cfg: dict[str, Any], optimize: bool | None) -> bool:
    """Whether evaluation runs the optimized network: detection only; ``optimize`` else ``detect.optimize``."""
    if cfg.get("task") != "detect":
        return False
    if optimize is None:
        optimize = (cfg.get("detect") or {}).get("optimize", True)
    return bool(optimize)


def _load_onnx_module(
    path: str | Path, overrides: list[str] | None, build_data: bool
) -> tuple[L.LightningModule, L.LightningDataModule | None, dict[str, Any]]:
    from lsknet.inference.onnx_runtime import load_onnx

    runtime = load_onnx(path)
    stored = runtime.meta.get("config")
    if not isinstance(stored, dict) or "task" not in stored:
        raise CheckpointError(
            f"{path}: this ONNX file holds no run config (exported from a bare model, not a training checkpoint); "
            "use lsknet.inference.onnx_runtime.load_onnx or Predictor(...) directly"
        )
    cfg = apply_overrides(copy.deepcopy(stored), list(overrides or []))
    module, datamodule = get_task(cfg["task"]).build(_without_starting_weights(cfg))
    module.model = runtime  # the task's loops call module.model(...) exactly as with the PyTorch network
    module.eval()
    return module, (datamodule if build_data else None), cfg


# ---------------------------------------------------------------------------------------------------------------------
# runs


def train(
    cfg: dict[str, Any], resume: str | Path | None = None, callbacks: list[Callback] | None = None
) -> RunResult:
    """Fit the task described by ``cfg`` (optionally resuming a ``last.ckpt``), then validate the best checkpoint.

    ``callbacks`` are added to the trainer's (e.g. the demo's time budget). Writes the run folder described in the
    module docstring and returns a :class:`RunResult`.
    """
    if resume is not None:
        stored = checkpoint_config(resume)  # validates the file before any work
        if stored.get("task") != cfg.get("task"):
            raise CheckpointError(
                f"{resume}: a {stored.get('task')!r} checkpoint cannot resume a {cfg.get('task')!r} run"
            )
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    task = get_task(cfg["task"])
    continued = resume_run_dir(resume) if resume is not None and not cfg.get("run_dir") else None
    run_dir = continued or resolve_run_dir(cfg)
    module, datamodule = task.build(cfg)
    if resume is not None:
        check_state_dict_fits(module, read_lightning_checkpoint(resume)["state_dict"], str(resume))
    trainer = build_trainer(cfg, run_dir, training=True, extra_callbacks=callbacks)
    if trainer.is_global_zero:
        _save_config(getattr(module, "config", cfg), run_dir)
    _say(f"lsknet: run folder {run_dir}")
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    train_seconds = time.perf_counter() - start
    checkpoint_cb = trainer.checkpoint_callback
    best = checkpoint_cb.best_model_path if isinstance(checkpoint_cb, ModelCheckpoint) else ""
    last = checkpoint_cb.last_model_path if isinstance(checkpoint_cb, ModelCheckpoint) else ""
    metrics: dict[str, Any] = {}
    if getattr(trainer, "interrupted", False):
        _say("lsknet: training interrupted; skipping the final validation")
    elif best:
        results = trainer.validate(module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        metrics = _plain(results[0]) if results else {}
    else:
        metrics = _plain(trainer.callback_metrics)
    summary = {
        "run_dir": str(run_dir),
        "task": cfg["task"],
        "monitor": (cfg.get("trainer") or {}).get("monitor"),
        "best_score": float(checkpoint_cb.best_model_score)
        if isinstance(checkpoint_cb, ModelCheckpoint) and checkpoint_cb.best_model_score is not None
        else None,
        "best_checkpoint": best or None,
        "last_checkpoint": last or None,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "world_size": int(trainer.world_size),
        "train_seconds": round(train_seconds, 2),
        "metrics": metrics,
    }
    if trainer.is_global_zero:
        write_json(summary, run_dir / "metrics.json")
    _say(f"lsknet: finished; metrics in {run_dir / 'metrics.json'}")
    return RunResult(run_dir, best or None, last or None, summary, module, trainer)


def evaluate(
    checkpoint_path: str | Path,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    split: str = "val",
    optimize: bool | None = None,
) -> dict[str, Any]:
    """Validate (``split="val"``) or test a checkpoint; writes the task's report files and ``metrics.json``.

    Detection runs the copy made by :func:`lsknet.optimize_for_inference` (same detections up to float rounding)
    unless ``optimize`` is False; ``None`` takes the config's ``detect.optimize`` (default true)."""
    module, datamodule, cfg = load_module(checkpoint_path, overrides)
    if _wants_optimized(cfg, optimize) and not hasattr(module.model, "session"):  # ONNX runtimes stay as they are
        from lsknet.inference.optimize import optimize_for_inference

        module.model = optimize_for_inference(module.model)
    out = Path(out_dir) if out_dir else resolve_run_dir(cfg, kind="eval-")
    trainer = build_trainer(cfg, out, training=False)
    if trainer.is_global_zero:
        _save_config(cfg, out)
    if split == "val":
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
    elif split == "test":
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    else:
        raise ConfigError(f"unknown split {split!r}; expected val or test")
    summary = {"checkpoint": str(checkpoint_path), "split": split, "out_dir": str(out)}
    summary["metrics"] = _plain(results[0]) if results else {}
    if trainer.is_global_zero:
        write_json(summary, out / "metrics.json")
    return summary
