"""Configs tell the truth: whole YAML files and overrides are checked against the task's schema (unknown keys name
the nearest known key; values of the wrong kind fail up front), with one ``error:`` line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lsknet.config import apply_overrides, list_presets, load_config, validate_config
from lsknet.errors import ConfigError


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lsknet.cli.main", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_misspelt_key_in_a_user_yaml_fails_before_anything_runs(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("inherit: aid_lsknet_t\ndata:\n  root: /data/AID\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"my\.yaml: unknown key data\.batchsize; did you mean data\.batch_size\?"):
        load_config(path)
    proc = _cli("train", str(path), "--print-config", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "data.batchsize" in lines[0], proc.stderr
    assert "batchsize" not in proc.stdout and not list(tmp_path.rglob("config.yaml"))


def test_top_level_and_deep_typos_name_the_nearest_key(tmp_path):
    cfg = load_config("dota_lsknet_t_orcnn")
    cfg["trainr"] = {"max_epochs": 1}
    with pytest.raises(ConfigError, match="unknown key trainr; did you mean trainer"):
        validate_config(cfg)
    cfg = load_config("dota_lsknet_t_orcnn")
    cfg["data"]["augment"]["rotate_prob"] = 0.5
    with pytest.raises(ConfigError, match="data.augment.rotate_prob; did you mean data.augment.rotate_p"):
        validate_config(cfg)


def test_wrong_value_type_is_one_line_exit_2():
    proc = _cli("train", "aid_lsknet_t", "trainer.max_epochs=two", "--print-config")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.max_epochs must be a number, got 'two'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.augment.flip=maybe", "data.augment.flip must be true or false"),
        ("optim=0.1", "optim must be a mapping"),
        ("optim.milestones=8", "optim.milestones must be a list"),
    ],
)
def test_kinds_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("dota_lsknet_t_orcnn"), [override])


def test_legitimate_variations_pass():
    cfg = load_config("dota_lsknet_t_orcnn")
    out = apply_overrides(
        cfg,
        ["trainer.devices=2", "trainer.precision=16", "data.image_size=[800,512]", "data.classes=[a,b]",
         "optim.lr=1e-3", "trainer.max_epochs=null"],
    )  # fmt: skip
    assert out["optim"]["lr"] == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; the schema makes it a number
    out["model"]["rpn"] = {"train_proposals": {"nms_pre": 2000}}  # open mapping
    out["trainer"]["fast_dev_run"] = True  # any Lightning Trainer argument
    validate_config(out)


def test_every_shipped_preset_is_valid():
    for name in list_presets():
        load_config(name)
