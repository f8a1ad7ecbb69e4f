"""The CLI says what happened: unknown class names counted by ``dota split``, a prediction with nothing processed
fails, a run without a best checkpoint is labelled as such, a trained ``.ckpt`` given as backbone weights is named."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from lsknet.cli.main import main
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.data.synthetic_scenes import generate_scene_dataset

from .test_run_cli import TINY, one_thread  # noqa: F401 - one_thread: one torch thread for this module too


@pytest.fixture(scope="module")
def unmonitored_run(tmp_path_factory):
    """A tiny classification run with ``trainer.monitor=null`` (so no best checkpoint) and what it printed."""
    scenes = generate_scene_dataset(tmp_path_factory.mktemp("scenes") / "data", per_class=4, size=32, seed=0)
    run_dir = tmp_path_factory.mktemp("runs") / "r"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "classify", f"data.root={scenes}", f"run_dir={run_dir}", "trainer.monitor=null", *TINY])
    assert code == 0
    return scenes, run_dir / "checkpoints" / "last.ckpt", out.getvalue()


def test_train_without_best_checkpoint_says_so(unmonitored_run):
    _, checkpoint, out = unmonitored_run
    assert "best checkpoint: None" not in out and "final validation (best checkpoint)" not in out
    assert "metrics at the end of training (no best checkpoint: trainer.monitor is null)" in out
    assert f"last checkpoint: {checkpoint}" in out


def test_prediction_with_every_input_skipped_exits_2(unmonitored_run, tmp_path, capsys):
    scenes, checkpoint, _ = unmonitored_run
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (broken / "b.jpg").write_bytes(b"\xff\xd8\xff not really")
    capsys.readouterr()
    with pytest.warns(UserWarning):
        code = main(["predict", "--checkpoint", str(checkpoint), str(broken), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "lsknet predict: error: no input could be processed (2 skipped" in err


def test_trained_checkpoint_as_backbone_weights_names_the_right_option(unmonitored_run, tmp_path, capsys):
    scenes, checkpoint, _ = unmonitored_run
    capsys.readouterr()
    code = main(["train", "classify", f"data.root={scenes}", f"model.checkpoint={checkpoint}", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "missing key" not in err
    line = [x for x in err.splitlines() if x.startswith("lsknet train: error:")][-1]
    assert "trained lsknet checkpoint" in line and f"lsknet train --resume {checkpoint}" in line


def test_dota_split_counts_and_reports_unknown_class_names(tmp_path, capsys):
    generate_dota_scenes(tmp_path / "src", num_images=1, size=256, seed=0, classes=["plane", "ship"],
                         objects_per_image=(2, 2), dense_probability=0.0)
    label = next((tmp_path / "src" / "labelTxt").glob("*.txt"))
    lines = label.read_text().splitlines()
    lines += ["10 10 50 10 50 50 10 50 container-crane 0", "60 60 90 60 90 90 60 90 spaceship 0"]
    label.write_text("\n".join(lines) + "\n")
    args = ["dota", "split", "--src", str(tmp_path / "src"), "--sizes", "256", "--gaps", "0", "--no-progress"]
    with pytest.warns(UserWarning) as caught:
        assert main([*args, "--dst", str(tmp_path / "v10")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == {"unknown class": 2}
    messages = [str(w.message) for w in caught]
    assert any(f"{label}:{len(lines) - 1}" in m and "container-crane" in m for m in messages)
    assert any(f"{label}:{len(lines)}" in m and "spaceship" in m for m in messages)
    written = "".join(p.read_text() for p in (tmp_path / "v10" / "labelTxt").glob("*.txt"))
    assert "spaceship" not in written and "container-crane" not in written and "plane" in written
    with pytest.warns(UserWarning, match="spaceship"):
        assert main([*args, "--dst", str(tmp_path / "v15"), "--classes", "dota1.5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == {"unknown class": 1}
    written = "".join(p.read_text() for p in (tmp_path / "v15" / "labelTxt").glob("*.txt"))
    assert "container-crane" in written
