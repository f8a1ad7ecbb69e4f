"""Run ``lsknet train`` in a subprocess that SIGKILLs itself right after a given mid-epoch checkpoint was written
(at the start of the next training batch, so the work done after the checkpoint is lost), then compare runs.

The kill is triggered from inside the process (a wrapper around the real CLI) so that it happens at an exact step
whatever the machine's speed; the process dies by a real SIGKILL: no exception handler, no ``finally`` runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from lsknet.tasks import resume

    kill_after_step = int(os.environ["LSKNET_TEST_KILL_AFTER_STEP"])
    armed = []
    save = resume.AtomicCheckpointIO.save_checkpoint

    def save_and_arm(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if checkpoint.get("global_step") == kill_after_step and os.path.basename(str(path)) == "last.ckpt":
            armed.append(path)

    start = resume.ResumeStateCallback.on_train_batch_start

    def start_or_die(self, trainer, module, batch, idx):
        if armed:
            os.kill(os.getpid(), signal.SIGKILL)
        start(self, trainer, module, batch, idx)

    resume.AtomicCheckpointIO.save_checkpoint = save_and_arm
    resume.ResumeStateCallback.on_train_batch_start = start_or_die
    from lsknet.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def lsknet_train(workdir: Path, args: list[str], kill_after_step: int | None = None, nproc: int = 1,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """``lsknet train ARGS`` in ``workdir`` (one thread per process); with ``kill_after_step`` the process kills
    itself by SIGKILL at the first batch after ``last.ckpt`` of that global step was written. ``nproc=2`` runs it
    under ``torchrun --standalone`` (gloo)."""
    script = workdir / "lsknet_killable.py"
    script.write_text(KILLER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", LSKNET_TEST_KILL_AFTER_STEP="-1")
    env.pop("LSKNET_RUN_DIR", None)
    if kill_after_step is not None:
        env["LSKNET_TEST_KILL_AFTER_STEP"] = str(kill_after_step)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    command = [*launcher, str(script), "train", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def was_killed(proc: subprocess.CompletedProcess) -> bool:
    """True when the process (or, under torchrun, a worker) ended by SIGKILL."""
    return proc.returncode == -signal.SIGKILL or "Signals.SIGKILL" in proc.stderr or "exitcode  : -9" in proc.stderr


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Weights (EMA and raw), optimizer and scheduler states and the step of two checkpoints are bit-identical."""
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a.get("current_model_state") or {}:
        assert torch.equal(a["current_model_state"][key], b["current_model_state"][key]), key
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, slot in state_a["state"].items():
            for name, value in slot.items():
                other = state_b["state"][pid][name]
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (pid, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def run_files(run_dir: Path) -> tuple[list[str], str]:
    """The csv metric rows' steps and the stored config text of a run folder."""
    rows = (run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    return rows, (run_dir / "config.yaml").read_text()


__all__ = ["assert_same_training_state", "load", "lsknet_train", "run_files", "was_killed"]
