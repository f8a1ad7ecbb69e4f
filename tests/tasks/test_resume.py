"""Exact resume: a real ``lsknet train`` process is SIGKILLed right after a mid-epoch ``last.ckpt``; ``lsknet train
--resume RUN/checkpoints/last.ckpt`` continues in the same run folder and ends with the weights, EMA weights,
optimizer and scheduler states of an uninterrupted run, bit for bit (CPU, ``trainer.deterministic=true``).

The oracle is the uninterrupted run itself (same config, same machine): any lost or repeated batch, different
augmentation draws, dropped optimizer/EMA/scheduler state or a different drop-path draw changes the weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lsknet.data.synthetic import generate_dota_scenes
from lsknet.data.synthetic_scenes import generate_scene_dataset
from lsknet.tasks.resume import AtomicCheckpointIO, ResumableLoader

from .resume_helpers import assert_same_training_state, load, lsknet_train, was_killed


def _classify_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "classify",
        f"data.root={root}",
        f"run_dir={run_dir}",
        "data.image_size=32",
        "data.batch_size=6",  # 18 training images -> 3 steps per epoch
        "data.num_workers=0",
        "data.train_ratio=0.5",
        "data.augment.color_jitter=0.2",
        "model.drop_path_rate=0.2",
        "ema.enabled=true",
        "ema.decay=0.9",
        "optim.warmup_epochs=1",
        "trainer.max_epochs=3",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        "trainer.monitor=null",
        "checkpoint.every_n_steps=2",
        *extra,
    ]


def _kill_and_resume(tmp_path: Path, args_for, kill_after_step: int, nproc: int = 1, timeout: int = 600):
    """Uninterrupted run in ``straight/``; killed + resumed run in ``killed/``; returns both final checkpoints."""
    reference = lsknet_train(tmp_path, args_for(tmp_path / "straight"), nproc=nproc, timeout=timeout)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    first = lsknet_train(tmp_path, args_for(killed_dir), kill_after_step=kill_after_step, nproc=nproc, timeout=timeout)
    assert was_killed(first), (first.returncode, first.stderr[-3000:])
    last = killed_dir / "checkpoints" / "last.ckpt"
    interrupted = load(last)
    assert interrupted["global_step"] == kill_after_step
    rows_before = (killed_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    resumed = lsknet_train(tmp_path, ["--resume", str(last)], nproc=nproc, timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert str(killed_dir) in resumed.stdout  # "run folder: ..." is the same folder
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["killed", "straight"]  # no new folder
    rows_after = (killed_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert rows_after[1 : len(rows_before)] == rows_before[1:]  # the logs were continued, not replaced
    assert len(rows_after) > len(rows_before)
    return load(tmp_path / "straight" / "checkpoints" / "last.ckpt"), load(last), interrupted


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate_scene_dataset(tmp_path_factory.mktemp("scenes") / "data", per_class=6, size=32, seed=0)


@pytest.mark.slow
def test_classification_killed_mid_epoch_resumes_bit_exact(scenes, tmp_path):
    # step 4 = the second of three batches of epoch 1: killed mid-epoch, after an epoch end and a validation
    straight, resumed, interrupted = _kill_and_resume(tmp_path, lambda run: _classify_args(scenes, run), 4)
    assert interrupted["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] in (0, 1)
    assert straight["global_step"] == 9
    assert_same_training_state(straight, resumed)


@pytest.mark.slow
def test_classification_ddp_killed_mid_epoch_resumes_bit_exact(tmp_path_factory, tmp_path):
    root = generate_scene_dataset(tmp_path_factory.mktemp("ddp") / "data", per_class=8, size=32, seed=0)

    def args(run):  # 24 training images, 2 ranks x batch 4 -> 3 steps per epoch
        return _classify_args(root, run, "data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp")

    straight, resumed, _ = _kill_and_resume(tmp_path, args, 4, nproc=2)
    assert straight["global_step"] == 9
    assert_same_training_state(straight, resumed)


@pytest.mark.slow
def test_detection_killed_mid_epoch_resumes_bit_exact(tmp_path_factory, tmp_path):
    data = tmp_path_factory.mktemp("dota")
    kw = dict(size=128, classes=["plane", "ship"], objects_per_image=(1, 3), dense_probability=0.0)
    generate_dota_scenes(data / "train", num_images=6, seed=1, **kw)
    generate_dota_scenes(data / "val", num_images=2, seed=2, **kw)

    def args(run):  # 6 images, batch 2 -> 3 steps per epoch; augmentation (flip, rotation) and RoI sampling drawn
        return [
            "detect",
            f"data.train_root={data / 'train'}",
            f"data.val_root={data / 'val'}",
            "data.classes=[plane, ship]",
            "data.image_size=128",
            "data.batch_size=2",
            "data.eval_batch_size=2",
            "data.num_workers=0",
            "model.rpn={train_proposals: {nms_pre: 200, max_per_img: 64}, test_proposals: {max_per_img: 64}}",
            "model.roi={num_samples: 32}",
            "trainer.max_epochs=2",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.deterministic=true",
            "trainer.monitor=null",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "checkpoint.every_n_steps=2",
            f"run_dir={run}",
        ]

    straight, resumed, _ = _kill_and_resume(tmp_path, args, 4)  # step 4 = batch 2 of 3 in epoch 1
    assert straight["global_step"] == 6
    assert_same_training_state(straight, resumed)


WRITE_THEN_DIE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from lsknet.tasks.resume import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def save_half_then_die(obj, handle, *args, **kwargs):
        handle.write(b"PK\\x03\\x04 partial checkpoint bytes")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_half_then_die
    io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(10**6)}}, path)
    """
)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    script = tmp_path / "write_then_die.py"
    script.write_text(WRITE_THEN_DIE)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(3))


def test_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["global_step"] == 1


def test_resumable_loader_continues_the_epoch_where_it_stopped():
    """Independent oracle: the full epoch's batches, read without interruption by a second loader."""
    data = list(range(20))

    def batches(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return [b.tolist() for b in loader]

    full = ResumableLoader(data, seed=3, batch_size=4)
    epoch2 = batches(full, 2)
    assert sorted(sum(epoch2, [])) == data and epoch2 != batches(full, 1)  # a permutation per epoch
    partial = ResumableLoader(data, seed=3, batch_size=4)
    partial.sampler.set_epoch(2)
    iterator = iter(partial)
    seen = [next(iterator).tolist(), next(iterator).tolist()]
    state = partial.state_dict()
    assert state == {"epoch": 2, "batches": 2, "seed": 3}
    restored = ResumableLoader(data, seed=3, batch_size=4)
    restored.load_state_dict(state)
    restored.sampler.set_epoch(2)  # what Lightning does before iterating: must not reset the position
    rest = [b.tolist() for b in restored]
    assert seen + rest == epoch2 and len(restored) == 5
    assert [b.tolist() for b in restored] == epoch2  # the next pass is a whole epoch again


def test_augmentation_draws_depend_on_the_sample_not_on_what_came_before():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            return torch.rand(1)  # an "augmentation" drawing from the global generator

    loader = ResumableLoader(Noise(), seed=0, batch_size=2)
    loader.sampler.set_epoch(1)
    torch.manual_seed(123)
    whole = torch.cat(list(loader))
    after_loading = torch.get_rng_state()
    torch.manual_seed(123)
    assert torch.equal(after_loading, torch.get_rng_state())  # data loading leaves the global generator alone
    torch.manual_seed(999)  # a different global state (e.g. after a restart) gives the same draws
    restored = ResumableLoader(Noise(), seed=0, batch_size=2)
    restored.load_state_dict({"epoch": 1, "batches": 2, "seed": 0})
    assert torch.equal(torch.cat(list(restored)), whole[4:])
    assert len(set(whole.flatten().tolist())) == 8  # and every sample draws its own numbers
