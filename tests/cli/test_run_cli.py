"""``lsknet train | eval | predict | demo`` through ``lsknet.cli.main.main``: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import lsknet  # noqa: F401  (registers lsknet_t / lsknet_s in timm)
from lsknet.cli.main import main
from lsknet.data.synthetic_scenes import generate_scene_dataset

TINY = [
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
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate_scene_dataset(tmp_path_factory.mktemp("scenes") / "data", per_class=4, size=32, seed=0)


@pytest.fixture(scope="module")
def checkpoint(scenes, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "cli"
    assert main(["train", "classify", f"data.root={scenes}", f"run_dir={run_dir}", *TINY]) == 0
    return run_dir / "checkpoints" / "best.ckpt"


def _one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("lsknet ")]
    assert code == 2
    assert "Traceback" not in err
    assert lines, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def test_train_prints_run_folder_and_writes_metrics(checkpoint, capsys):
    run_dir = checkpoint.parent.parent
    assert checkpoint.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert set(summary["metrics"]) >= {"val/acc", "val/acc_top5", "val/loss", "val/mean_class_acc"}


def test_print_config_applies_overrides_without_training(scenes, capsys, tmp_path):
    code = main(["train", "aid_lsknet_s", f"data.root={scenes}", "optim.lr=0.123", "--print-config"])
    assert code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.123 and cfg["model"]["name"] == "lsknet_s"
    assert cfg["data"]["train_ratio"] == 0.2 and cfg["task"] == "classify"  # AID 20% protocol from the preset
    assert not (tmp_path / "runs").exists()
    # options may sit between overrides
    assert main(["train", "classify", "optim.lr=0.5", "--print-config", "seed=7", "--strict"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.5 and cfg["seed"] == 7 and cfg["data"]["strict"] is True
    _one_line_error(capsys, main(["train", "classify", "seed=1", "--bogus"]), "unknown option '--bogus'")


@pytest.mark.parametrize("preset", ["aid_lsknet_t", "aid_lsknet_s", "nwpu_lsknet_t", "nwpu_lsknet_s", "demo_classify"])
def test_presets_load(preset, capsys):
    assert main(["train", preset, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task"] == "classify" and cfg["trainer"]["monitor"] == "val/acc"


def test_eval_writes_report_files(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "val/acc=" in capsys.readouterr().out
    for name in ("metrics.json", "val_confusion_matrix.csv", "val_confusion_matrix.png", "val_metrics.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "val_metrics.json").read_text())
    assert report["num_samples"] == 12  # 2 held-out images x 6 classes


def test_predict_writes_csv(checkpoint, scenes, tmp_path, capsys):
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(checkpoint), str(scenes / "roads"), "--out", str(out), "--topk", "2"])
    assert code == 0
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "path,label_1,score_1,label_2,score_2" and len(lines) == 1 + 4
    assert "num_images: 4" in capsys.readouterr().out


def test_bad_inputs_give_one_line_and_exit_code_2(checkpoint, scenes, tmp_path, capsys):
    _one_line_error(capsys, main(["train", "no_such_preset"]), "unknown preset 'no_such_preset'")
    _one_line_error(capsys, main(["train", "classify", "optim.lrr=1"]), "bad override key 'optim.lrr'")
    _one_line_error(capsys, main(["eval", "--checkpoint", str(tmp_path / "nope.ckpt")]), "checkpoint not found")
    _one_line_error(
        capsys, main(["predict", "--checkpoint", str(tmp_path / "nope.ckpt"), str(scenes)]), "checkpoint not found"
    )
    _one_line_error(
        capsys,
        main(["eval", "--checkpoint", str(checkpoint), "model.name=lsknet_s", "--out", str(tmp_path / "e")]),
        "does not fit model lsknet_s",
    )
    _one_line_error(capsys, main(["train", "classify", f"data.root={tmp_path / 'absent'}", *TINY]), "not found")


def test_empty_class_folder_is_an_error(scenes, tmp_path, capsys):
    root = tmp_path / "ds"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "x.png")
    code = main(["train", "classify", f"data.root={root}", f"run_dir={tmp_path / 'r'}", *TINY])
    _one_line_error(capsys, code, "empty class folder", str(root / "b"))


def test_corrupt_image_skipped_with_warning_or_error_when_strict(tmp_path, capsys):
    root = generate_scene_dataset(tmp_path / "ds", per_class=2, size=32, seed=1)
    (root / "water" / "zz_truncated.png").write_bytes((root / "water" / "water_0000.png").read_bytes()[:60])
    code = main(["train", "classify", f"data.root={root}", f"run_dir={tmp_path / 'strict'}", "--strict", *TINY])
    _one_line_error(capsys, code, "zz_truncated.png")
    with pytest.warns(UserWarning, match="zz_truncated.png"):
        code = main(["train", "classify", f"data.root={root}", f"run_dir={tmp_path / 'lenient'}", *TINY])
    assert code == 0


def test_backbone_checkpoint_of_the_wrong_variant_is_an_error(scenes, tmp_path, capsys):
    small = tmp_path / "lsk_s_backbone.pth"
    torch.save({"state_dict": timm.create_model("lsknet_s", num_classes=0).state_dict()}, small)
    code = main(["train", "classify", f"data.root={scenes}", "model.name=lsknet_t", f"model.checkpoint={small}", *TINY])
    _one_line_error(capsys, code, "lsk_s_backbone.pth")
    code = main(["train", "classify", f"data.root={scenes}", f"model.checkpoint={tmp_path / 'none.pth'}", *TINY])
    _one_line_error(capsys, code, "none.pth")


def test_demo_runs_end_to_end_with_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    overrides = ["demo.per_class=6", "demo.test_per_class=2", "demo.image_size=32", "demo.min_epochs=1"]
    overrides += ["data.image_size=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    code = main(["demo", "--task", "classify", "--out", str(out), "--budget-minutes", "0.05", *overrides])
    assert code == 0
    text = capsys.readouterr().out
    assert f"results in {out}" in text and "test_accuracy:" in text
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["num_test_images"] == 12 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert Path(summary["confusion_matrix_png"]).is_file()
    assert (out / "predictions.csv").is_file()


def test_resume_given_as_override_reuses_the_checkpoint_config(checkpoint, tmp_path):
    last = checkpoint.parent / "last.ckpt"
    out = tmp_path / "resumed"
    assert main(["train", f"resume={last}", "trainer.max_epochs=2", f"run_dir={out}"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs"] == 2 and summary["global_step"] == 4  # 12 training images / batch 6 = 2 steps per epoch


def test_predict_classification_grid_on_a_geotiff(checkpoint, tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    data = np.full((3, 100, 130), 90, np.uint8)
    data[:, :, :40] = 0  # nodata: the first column of cells is skipped
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", height=100, width=130, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=rasterio.Affine(2, 0, 500000, 0, -2, 4000000)) as dst:  # fmt: skip
        dst.write(data)
    out = tmp_path / "grid"
    code = main(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--tile", "32",
                 "--format", "geotiff,gpkg", "--topk", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "skipped_cells: 3" in capsys.readouterr().out  # 3 rows x 4 columns of 32-px cells; column 0 is nodata
    with rasterio.open(out / "scenes" / "scene" / "classes.tif") as grid:
        assert (grid.height, grid.width) == (3, 4) and (grid.read(1)[:, 0] == 255).all()
    code = main(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(out), "--tile", "32",
                 "--format", "kml"])  # fmt: skip
    _one_line_error(capsys, code, "--format")
