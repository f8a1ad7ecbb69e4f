"""The shared runner: run folder contents, checkpoints, resume, EMA weights, trainer options, run-folder naming."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn

from lsknet.config import apply_overrides, load_config
from lsknet.data.synthetic_scenes import generate_scene_dataset
from lsknet.errors import CheckpointError, ConfigError
from lsknet.tasks import runner
from lsknet.tasks.ema import EMACallback


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and far faster than two threads on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PER_CLASS = 6  # x 6 classes; train_ratio 0.5 -> 18 train / 18 val images


def tiny_config(root: Path, run_dir: Path, *extra: str) -> dict:
    overrides = [
        f"data.root={root}",
        f"run_dir={run_dir}",
        "data.image_size=32",
        "data.batch_size=6",
        "data.num_workers=0",
        "data.train_ratio=0.5",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        "optim.warmup_epochs=0",
        *extra,
    ]
    return apply_overrides(load_config("classify"), overrides)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate_scene_dataset(tmp_path_factory.mktemp("scenes") / "data", per_class=PER_CLASS, size=32, seed=0)


@pytest.fixture(scope="module")
def first_run(scenes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "first"
    return runner.train(tiny_config(scenes, run_dir, "trainer.max_epochs=2"))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_folder_holds_config_checkpoints_logs_and_metrics(first_run):
    run_dir = first_run.run_dir
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["task"] == "classify" and saved["trainer"]["max_epochs"] == 2
    assert saved["data"]["classes"] == ["desert", "farmland", "forest", "residential", "roads", "water"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    rows = _csv_rows(run_dir / "logs" / "csv" / "metrics.csv")
    val_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert len(val_acc) >= 2  # one per epoch (+ the final validation)
    summary = json.loads((run_dir / "metrics.json").read_text())
    # 18 training images, batch 6 -> 3 optimizer steps per epoch, 2 epochs
    assert summary["global_step"] == 6 and summary["epochs"] == 2
    # The best score is the best epoch's val/acc as logged independently by the CSV logger.
    assert summary["best_score"] == pytest.approx(max(val_acc[:2]))
    assert summary["metrics"]["val/acc"] == pytest.approx(summary["best_score"])
    assert any(v for r in rows for k, v in r.items() if k.startswith("lr-AdamW"))  # learning-rate monitor


def test_resume_continues_from_last_checkpoint(first_run, scenes, tmp_path):
    cfg = tiny_config(scenes, tmp_path / "resumed", "trainer.max_epochs=3")
    result = runner.train(cfg, resume=first_run.last_checkpoint)
    assert result.metrics["global_step"] == 9  # 6 steps restored + 3 new ones
    rows = _csv_rows(tmp_path / "resumed" / "logs" / "csv" / "metrics.csv")
    epochs = {int(r["epoch"]) for r in rows if r.get("epoch") and r.get("train/loss_epoch")}
    assert epochs == {2}  # only the new epoch was trained


def test_resume_errors(first_run, scenes, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        runner.train(tiny_config(scenes, tmp_path / "x"), resume=tmp_path / "missing.ckpt")
    cfg = tiny_config(scenes, tmp_path / "y", "model.name=lsknet_s")
    with pytest.raises(CheckpointError, match="does not fit model lsknet_s"):
        runner.train(cfg, resume=first_run.last_checkpoint)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        runner.train(tiny_config(scenes, tmp_path / "z"), resume=tmp_path / "junk.ckpt")


def test_unknown_trainer_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_epoch"):
        runner.trainer_kwargs({"max_epoch": 3})
    assert runner.trainer_kwargs({"max_epochs": 3, "monitor": "val/acc", "precision": None}) == {"max_epochs": 3}


def test_torchrun_environment_fills_devices_nodes_and_strategy(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "8")
    kwargs = runner.trainer_kwargs({"devices": "auto", "num_nodes": 1, "strategy": "auto"})
    assert kwargs == {"devices": 4, "num_nodes": 2, "strategy": "ddp"}
    assert runner.trainer_kwargs({"devices": 2, "strategy": "ddp_spawn"})["devices"] == 2  # explicit wins


def test_run_dir_naming(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LSKNET_RUN_DIR", raising=False)
    for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert runner.resolve_run_dir({"run_dir": "x/y", "name": "n"}) == Path("x/y")
    first = runner.resolve_run_dir({"name": "n"})
    assert first.parent == Path("runs/n")
    first.mkdir(parents=True)
    second = runner.resolve_run_dir({"name": "n"})
    assert second != first  # never reuses an existing folder
    # A process started by Lightning's DDP launcher inherits the parent's choice.
    monkeypatch.setenv("LSKNET_RUN_DIR", "1:runs/n/chosen-by-parent")
    assert runner.resolve_run_dir({"name": "n"}) == Path("runs/n/chosen-by-parent")
    monkeypatch.delenv("LSKNET_RUN_DIR")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "0123456789abcdef")
    assert runner.resolve_run_dir({"name": "n"}) == Path("runs/n/torchrun-0123456789ab")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(ConfigError, match="run_dir"):
        runner.resolve_run_dir({"name": "n"})


class _Scalar(L.LightningModule):
    """One parameter w; loss = w (gradient 1), so plain SGD with lr 0.5 moves w by -0.5 per step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([4.0]))

    def training_step(self, batch, batch_idx):
        return self.w.sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/w", self.w.sum())  # the weights validation sees

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_ema_callback_averages_weights_and_checkpoints_them(tmp_path):
    loader = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)
    ema = EMACallback(decay=0.5, warmup=True)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    module = _Scalar()
    trainer.fit(module, loader, loader)
    # Raw weights after steps 1..4: 3.5, 3.0, 2.5, 2.0. The average starts as a copy of the first, then
    # avg <- d * avg + (1 - d) * w with d = min(0.5, (1 + n) / (10 + n)) = 0.5 for n >= 1... n=1: 2/11.
    avg = 3.5
    for n, w in zip((1, 2, 3), (3.0, 2.5, 2.0)):
        d = min(0.5, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * w
    assert trainer.callback_metrics["val/w"].item() == pytest.approx(avg, rel=1e-6)  # validation saw the EMA
    assert module.w.item() == pytest.approx(avg, rel=1e-6)  # after fit the model keeps the EMA weights
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    checkpoint = torch.load(tmp_path / "ema.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["w"].item() == pytest.approx(avg, rel=1e-6)
