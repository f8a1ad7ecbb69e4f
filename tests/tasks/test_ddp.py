"""DDP on CPU: ``lsknet train`` under ``torchrun --standalone --nproc_per_node 2`` (gloo) on generated scenes.

Each rank runs the real CLI (``lsknet.cli.main.main``) and reports what it ended with; the ranks must agree on
the weights (DDP averages gradients: different data shards with synchronised updates give identical parameters),
on the validation metric (synchronised by torchmetrics), and on the run folder (named from the torchrun id).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsknet.data.synthetic_scenes import generate_scene_dataset

from .ddp_helpers import train_on_two_ranks


def test_two_process_ddp_ranks_agree(tmp_path):
    root = generate_scene_dataset(tmp_path / "data", per_class=8, size=32, seed=0)  # 48 images, 24 for training
    overrides = [
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=6",
        "data.num_workers=0",
        "data.train_ratio=0.5",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.monitor=null",  # keep the end-of-training weights (no reload of a best checkpoint)
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        "optim.warmup_epochs=0",
    ]
    reports = train_on_two_ranks(tmp_path, "classify", overrides)
    for report in reports:
        assert report["code"] == 0 and report["world_size"] == 2 and report["strategy"] == "DDPStrategy"
        # 24 training images sharded over 2 ranks, batch 6 -> 2 steps per epoch (4 in a single process)
        assert report["global_step"] == 4
    assert reports[0]["param_sha"] == reports[1]["param_sha"]
    assert reports[0]["metrics"]["val/acc"] == reports[1]["metrics"]["val/acc"]
    assert reports[0]["run_dir"] == reports[1]["run_dir"]
    run_dir = tmp_path / reports[0]["run_dir"]
    assert run_dir.parent == tmp_path / "runs" / "classify" and run_dir.name.startswith("torchrun-")
    assert len(list(run_dir.parent.iterdir())) == 1  # one folder for both ranks
    summary = json.loads((run_dir / "metrics.json").read_text())  # written once, by rank 0
    assert summary["world_size"] == 2 and (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_lightning_launcher_ddp_uses_one_run_folder(tmp_path):
    """``lsknet train ... trainer.strategy=ddp trainer.devices=2`` without torchrun: Lightning starts rank 1 itself."""
    root = generate_scene_dataset(tmp_path / "data", per_class=4, size=32, seed=0)
    command = [sys.executable, "-m", "lsknet.cli.main", "train", "classify", f"data.root={root}"]
    command += ["data.image_size=32", "data.batch_size=6", "data.num_workers=0", "trainer.max_epochs=1"]
    command += ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    command += ["trainer.enable_progress_bar=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LSKNET_RUN_DIR", None)
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs" / "classify").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()
    assert json.loads((runs[0] / "metrics.json").read_text())["world_size"] == 2
    assert Path(runs[0] / "checkpoints" / "best.ckpt").is_file()
