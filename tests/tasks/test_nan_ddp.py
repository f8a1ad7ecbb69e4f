"""A non-finite loss on ONE rank under DDP (2 gloo processes, torchrun): every rank skips that step together (no hang,
identical finite weights), and after ``trainer.nan_patience`` consecutive skips every rank stops with the same
one-line error and ``diverged.ckpt`` is written.

Only rank 1's classifier produces NaN logits, at the global steps listed in ``LSKNET_TEST_NAN_STEPS``.
Oracles: the weights of the two ranks must be equal and finite; the number of optimizer steps taken must be the
number of batches minus the skipped ones (counted independently from the step list), and both ranks' stderr carry
the same ``lsknet train: error: training stopped`` line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lsknet.data.synthetic_scenes import generate_scene_dataset

from .ddp_helpers import train_on_two_ranks

NAN_ON_RANK_1 = """
from lsknet.tasks import classification
nan_batches = {int(s) for s in os.environ["LSKNET_TEST_NAN_BATCHES"].split(",") if s}
forward = classification.SceneClassifier.forward
batches_seen = []

def nan_on_rank1(self, images):
    logits = forward(self, images)
    if self.training:
        batches_seen.append(self.global_step)
        if rank == 1 and len(batches_seen) - 1 in nan_batches:  # the n-th training batch (0-based)
            logits = logits * float("nan")
    return logits

classification.SceneClassifier.forward = nan_on_rank1
from lsknet.tasks import base
errors = []
init_error = base.TrainingDiverged.__init__

def record_error(self, *args):
    errors.append(str(args[0]))
    init_error(self, *args)

base.TrainingDiverged.__init__ = record_error
REPORT_EXTRA = lambda: {"batches": len(batches_seen), "errors": errors}
"""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate_scene_dataset(tmp_path_factory.mktemp("nan") / "data", per_class=8, size=32, seed=0)


def _two_ranks(workdir: Path, root: Path, nan_batches: list[int], *extra: str) -> list[dict]:
    overrides = [
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=4",  # 24 training images over 2 ranks -> 3 batches per epoch
        "data.num_workers=0",
        "data.train_ratio=0.5",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.monitor=null",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "optim.warmup_epochs=0",
        f"run_dir={workdir / 'run'}",
        *extra,
    ]
    os.environ["LSKNET_TEST_NAN_BATCHES"] = ",".join(map(str, nan_batches))
    try:  # a hang (one rank waiting for the other's gradients) fails by the timeout
        return train_on_two_ranks(workdir, "classify", overrides, timeout=400, preamble=NAN_ON_RANK_1,
                                  expect_success=False)
    finally:
        os.environ.pop("LSKNET_TEST_NAN_BATCHES", None)


@pytest.mark.slow
def test_nan_on_one_rank_is_skipped_by_all_ranks(scenes, tmp_path):
    reports = _two_ranks(tmp_path, scenes, [1, 4], "trainer.nan_patience=2")
    for report in reports:
        assert report["code"] == 0 and report["finite"] and report["batches"] == 6
        assert report["global_step"] == 6  # skipped steps are counted (with no update)
    assert reports[0]["param_sha"] == reports[1]["param_sha"]
    assert "non-finite loss on 1 of 2 processes" in reports[0]["stderr"]


@pytest.mark.slow
def test_nan_patience_stops_every_rank_with_one_message_and_a_checkpoint(scenes, tmp_path):
    reports = _two_ranks(tmp_path, scenes, [2, 3, 4, 5], "trainer.nan_patience=3")
    assert [r["code"] for r in reports] == [2, 2]
    assert [r["batches"] for r in reports] == [5, 5]  # batches 2, 3, 4 skipped, then both stop
    assert len(reports[0]["errors"]) == 1 and reports[0]["errors"] == reports[1]["errors"]  # the same message
    assert "3 consecutive steps" in reports[0]["errors"][0]
    assert f"lsknet train: error: {reports[0]['errors'][0]}" in reports[0]["stderr"]  # printed as one line
    assert (tmp_path / "run" / "checkpoints" / "diverged.ckpt").is_file()


def test_a_skipped_step_leaves_weights_and_optimizer_state_unchanged(scenes, tmp_path, monkeypatch):
    """Single process: the NaN batch (the second) changes nothing; the batches around it do change the weights."""
    import lightning as L
    import torch

    from lsknet.config import apply_overrides, load_config
    from lsknet.tasks import classification, runner

    cfg = apply_overrides(load_config("classify"), [
        f"data.root={scenes}", "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
        "data.train_ratio=0.5", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.monitor=null", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0",
        "optim.warmup_epochs=0", f"run_dir={tmp_path / 'run'}",
    ])
    module, datamodule = classification.build(cfg)
    forward = type(module).forward
    snapshots = []

    def nan_second_batch(self, images):
        logits = forward(self, images)
        return logits * float("nan") if self.training and len(snapshots) == 2 else logits

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state = trainer.optimizers[0].state
            snapshots.append(([p.detach().clone() for p in pl_module.parameters()],
                              sum(float(s["exp_avg"].abs().sum()) for s in state.values() if "exp_avg" in s)))

    monkeypatch.setattr(type(module), "forward", nan_second_batch)
    trainer = runner.build_trainer(cfg, tmp_path / "run", training=True, extra_callbacks=[Snapshot()])
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        trainer.fit(module, datamodule=datamodule)
    final = [p.detach() for p in module.parameters()]
    (w0, m0), (w1, m1), (w2, m2) = snapshots  # 24 training images / 8 = 3 batches
    assert all(torch.isfinite(p).all() for p in final)
    assert not all(torch.equal(a, b) for a, b in zip(w0, w1))  # batch 0 trained
    assert all(torch.equal(a, b) for a, b in zip(w1, w2)) and m1 == m2  # batch 1 (NaN) skipped: nothing moved
    assert not all(torch.equal(a, b) for a, b in zip(w2, final))  # batch 2 trained
