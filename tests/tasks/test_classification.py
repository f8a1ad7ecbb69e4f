"""Scene-classification task: build, training on generated scenes, per-class reports, predict CSV, realdata run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lsknet.config import apply_overrides, load_config
from lsknet.data.scene import stratified_split
from lsknet.data.synthetic_scenes import SCENE_CLASSES, generate_scene_dataset
from lsknet.errors import ConfigError, DatasetFormatError, DataSkipWarning
from lsknet.evaluation.classification import read_confusion_csv
from lsknet.tasks import get_task, runner
from lsknet.tasks.classification import build, predict, read_predictions

PER_CLASS = 10


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(root: Path, run_dir: Path, *extra: str) -> dict:
    overrides = [
        f"data.root={root}",
        f"run_dir={run_dir}",
        "data.image_size=32",
        "data.batch_size=10",
        "data.num_workers=0",
        "data.train_ratio=0.5",
        "trainer.max_epochs=4",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "optim.lr=2e-3",
        "optim.warmup_epochs=0",
        "model.drop_path_rate=0.0",
        "trainer.log_every_n_steps=1",
        *extra,
    ]
    return apply_overrides(load_config("classify"), overrides)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate_scene_dataset(tmp_path_factory.mktemp("scenes") / "data", per_class=PER_CLASS, size=32, seed=0)


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    return runner.train(tiny_config(scenes, tmp_path_factory.mktemp("runs") / "run"))


def test_get_task_and_build_fill_classes_from_folders(scenes):
    assert get_task("classify").build is build
    module, datamodule = build(tiny_config(scenes, Path("unused")))
    assert module.classes == sorted(SCENE_CLASSES) == datamodule.classes
    assert module.hparams["config"]["data"]["classes"] == sorted(SCENE_CLASSES)  # stored in checkpoints
    logits = module(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, len(SCENE_CLASSES))


def test_build_errors(tmp_path):
    cfg = apply_overrides(load_config("classify"), [])
    with pytest.raises(ConfigError, match="data.root"):
        build(cfg)
    (tmp_path / "only" / "one").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="at least 2 classes"):
        build(apply_overrides(cfg, [f"data.root={tmp_path / 'only'}"]))


def test_training_learns_generated_scenes(trained):
    accuracy = trained.metrics["metrics"]["val/acc"]
    assert accuracy >= 0.45, accuracy  # chance is 1/6; 4 short epochs on 30 images reach well above it
    assert trained.metrics["metrics"]["val/acc_top5"] >= accuracy


def test_confusion_matrix_files_match_the_held_out_split(trained):
    run_dir = trained.run_dir
    matrix, classes = read_confusion_csv(run_dir / "val_confusion_matrix.csv")
    assert classes == sorted(SCENE_CLASSES)
    _, held = stratified_split([c for c in range(6) for _ in range(PER_CLASS)], 0.5, seed=0)
    assert matrix.sum() == len(held) and (matrix.sum(axis=1) == PER_CLASS // 2).all()
    # The logged top-1 accuracy (torchmetrics) equals the trace of the written confusion matrix.
    assert np.trace(matrix) / matrix.sum() == pytest.approx(trained.metrics["metrics"]["val/acc"])
    report = json.loads((run_dir / "val_metrics.json").read_text())
    for i, name in enumerate(classes):
        assert report["per_class_accuracy"][name] == pytest.approx(matrix[i, i] / matrix[i].sum())
    assert (run_dir / "val_confusion_matrix.png").stat().st_size > 1000


def test_predict_writes_sorted_topk_csv_and_skips_bad_images(trained, scenes, tmp_path):
    module = trained.module
    sources = [scenes / "water", scenes / "forest" / "forest_0000.png"]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(DataSkipWarning, match="broken.jpg"):
        result = predict(module, [*sources, bad], tmp_path / "out", topk=3)
    assert result["num_images"] == PER_CLASS + 1 and result["skipped"] == [str(bad)]
    rows = read_predictions(result["predictions_csv"])
    with open(result["predictions_csv"], newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["path", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3"]
    for row in rows:
        scores = [float(row[f"score_{i}"]) for i in (1, 2, 3)]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-5
        assert {row["label_1"], row["label_2"], row["label_3"]} <= set(SCENE_CLASSES)
    # The CSV's top-1 agrees with the module's own argmax on the same preprocessing path.
    water_hits = sum(row["label_1"] == "water" for row in rows if "/water/" in row["path"])
    assert water_hits >= 1
    with pytest.raises(DatasetFormatError, match="broken.jpg"):
        predict(module, [bad], tmp_path / "strict", strict=True)
    with pytest.raises(DatasetFormatError, match="no such file"):
        predict(module, [tmp_path / "missing.png"], tmp_path / "x")


@pytest.mark.realdata
def test_training_on_real_aid_subset_reduces_the_loss(shared_data, tmp_path):
    cfg = tiny_config(
        shared_data / "aid_150px_subset",
        tmp_path / "aid",
        "data.image_size=64",
        "data.batch_size=15",
        "data.train_ratio=0.5",
        "data.augment.scale=[1.0,1.0]",
        "data.augment.flip=false",
        "data.augment.rot90=false",
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "loss.label_smoothing=0.0",
    )
    result = runner.train(cfg)
    assert result.metrics["global_step"] == 10
    with (tmp_path / "aid" / "logs" / "csv" / "metrics.csv").open(newline="") as handle:
        epoch_losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(handle) if r.get("train/loss_epoch")]
    assert len(epoch_losses) == 5
    assert epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses  # it fits the (fixed) training batches
    matrix, classes = read_confusion_csv(tmp_path / "aid" / "val_confusion_matrix.csv")
    assert len(classes) == 30 and classes[0] == "Airport"


@pytest.mark.slow
def test_default_demo_learns_far_above_chance(tmp_path):
    from lsknet.tasks.classification_demo import demo

    summary = demo(tmp_path / "demo", budget_minutes=3.0)
    assert summary["test_accuracy"] >= 0.8 and summary["val_accuracy"] >= 0.8  # chance is 1/6
    assert (tmp_path / "demo" / "predictions.csv").is_file() and Path(summary["confusion_matrix_png"]).is_file()


def test_model_checkpoint_loads_official_backbone_weights_and_resets_the_head(scenes, tmp_path):
    import timm

    official = timm.create_model("lsknet_t")  # 1000-class head, like lsk_t_backbone-2ef8a593.pth
    torch.save({"state_dict": official.state_dict()}, tmp_path / "lsk_t_backbone.pth")
    module, _ = build(tiny_config(scenes, tmp_path / "r", f"model.checkpoint={tmp_path / 'lsk_t_backbone.pth'}"))
    module.setup("fit")  # starting weights are read when fitting starts (TaskModule.setup)
    loaded = module.model.state_dict()
    for key, value in official.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(loaded[key], value), key
    assert loaded["head.weight"].shape == (len(SCENE_CLASSES), 256)


def test_trained_checkpoint_loads_without_its_starting_weights_file(scenes, tmp_path):
    import timm

    starting = tmp_path / "lsk_t_backbone.pth"
    torch.save({"state_dict": timm.create_model("lsknet_t").state_dict()}, starting)
    cfg = tiny_config(scenes, tmp_path / "r", f"model.checkpoint={starting}", "trainer.max_epochs=1")
    result = runner.train(cfg)
    trained_weights = result.module.model.state_dict()
    starting.unlink()  # the run's starting weights are gone (e.g. the checkpoint moved to another machine)
    module, _, loaded_cfg = runner.load_module(result.best_checkpoint, build_data=False)
    assert loaded_cfg["model"]["checkpoint"] == str(starting)  # the stored config still records the origin
    for key, value in module.model.state_dict().items():
        assert torch.allclose(value, trained_weights[key]), key
