"""Property tests for YAML configs, ``key=value`` overrides and checkpoint files, through the library and the CLI.

Oracle: a config either loads to a mapping with a ``task`` or raises :class:`ConfigError`; an override list either
applies or raises :class:`ConfigError`; from the CLI the outcome is exit 0, or exit 2 with exactly one
``lsknet <command>: error: ...`` line and no traceback. A checkpoint that is not a weights-only Lightning
checkpoint (truncated, random bytes, the wrong Python type, a pickle that tries to run code) is refused with
:class:`CheckpointError`, and the code in the pickle never runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsknet.cli.main import main
from lsknet.config import apply_overrides, load_config
from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.checkpoint import read_checkpoint
from lsknet.tasks.runner import read_lightning_checkpoint

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

yaml_like = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(st.sampled_from(["task: classify", "task: detect", "inherit: classify", "inherit: [1, 2]",
                              "inherit: x.yaml", "batchsize: 8", "trainer: {max_epochs: two}", "data: [", "- a",
                              "{{", "*anchor",
                              "name: ../../escape", "model:\n  name: lsknet_t", "\t bad indent", ": :", "? x"]),
             max_size=6).map(lambda lines: "\n".join(lines).encode()),
    st.integers(1, 40).map(lambda n: ("[" * n * 10).encode()),  # deep nesting (YAML recursion)
)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _assert_clean_cli_outcome(code: int, err: str, command: str) -> None:
    assert "Traceback" not in err
    if code != 0:
        lines = [line for line in err.splitlines() if line.startswith(f"lsknet {command}: error: ")]
        assert code == 2 and len(lines) == 1, err


@FUZZ
@given(yaml_like)
def test_config_files_load_or_give_a_config_error(tmp_path, data):
    path = tmp_path / "user.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert str(path) in str(err) or "preset" in str(err) or "inherit" in str(err)
        return
    assert isinstance(cfg, dict) and "task" in cfg


@FUZZ
@given(yaml_like)
def test_cli_with_a_fuzzed_config_prints_one_line_or_the_config(tmp_path, data):
    path = tmp_path / "user.yaml"
    path.write_bytes(data)
    code, _, err = _cli(["train", str(path), "--print-config"])
    _assert_clean_cli_outcome(code, err, "train")


def test_config_inheritance_loop_is_a_config_error(tmp_path):
    (tmp_path / "a.yaml").write_text(f"inherit: {tmp_path / 'b.yaml'}\ntask: classify\n")
    (tmp_path / "b.yaml").write_text(f"inherit: {tmp_path / 'a.yaml'}\ntask: classify\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


override = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(["optim.lr", "trainer.max_epochs", "data", "model.name", "a..b", ".", "optim.lr.x",
                               "trainer", "", "data.augment.flip"]),
              st.one_of(st.text(max_size=20), st.sampled_from(["[", "{a: [}", "[[[[[[", "nan", "1e400", "null", "~"])))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
)


@FUZZ
@given(st.lists(override, max_size=4))
def test_overrides_apply_or_give_a_config_error(overrides):
    base = load_config("classify")
    try:
        cfg = apply_overrides(base, overrides)
    except ConfigError:
        return
    assert cfg["task"] == "classify" and base == load_config("classify")  # the input is never modified


@FUZZ
@given(st.lists(override, min_size=1, max_size=3))
def test_cli_with_fuzzed_overrides_prints_one_line_or_the_config(overrides):
    code, _, err = _cli(["train", "classify", *overrides, "--print-config"])
    _assert_clean_cli_outcome(code, err, "train")


# --------------------------------------------------------------------------------------------------------------------
# checkpoints


class _RunsCode:
    """Unpickling this calls ``open(path, "w")`` (as a malicious checkpoint would call os.system)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def lightning_like_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    torch.save({"state_dict": {"model.w": torch.arange(2000.0)}, "hyper_parameters": {"config": {"task": "classify"}},
                "epoch": 1, "global_step": 3}, path)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_damaged_checkpoints_are_refused_with_a_checkpoint_error(tmp_path, lightning_like_checkpoint, data):
    good = lightning_like_checkpoint
    kind = data.draw(st.sampled_from(["truncated", "random", "flipped"]))
    if kind == "truncated":
        blob = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "random":
        blob = data.draw(st.binary(max_size=500))
    else:
        i = data.draw(st.integers(0, len(good) - 1))
        blob = good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :]
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(blob)
    for read in (read_lightning_checkpoint, read_checkpoint):
        try:
            result = read(path)
        except CheckpointError as err:
            assert str(path) in str(err)
        else:  # a flipped byte inside tensor data still reads; the structure must then be intact
            assert kind == "flipped" and isinstance(result, dict)


@pytest.mark.parametrize("payload", ["list", "tensor", "no_state_dict", "code"])
def test_wrong_type_and_code_running_checkpoints_are_refused(tmp_path, payload):
    path, marker = tmp_path / f"{payload}.ckpt", tmp_path / "pwned"
    if payload == "list":
        torch.save([1, 2, 3], path)
    elif payload == "tensor":
        torch.save(torch.zeros(3), path)
    elif payload == "no_state_dict":
        torch.save({"epoch": 1}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump({"state_dict": _RunsCode(str(marker))}, handle)
    with pytest.raises(CheckpointError, match=payload):
        read_lightning_checkpoint(path)
    code, _, err = _cli(["eval", "--checkpoint", str(path)])
    _assert_clean_cli_outcome(code, err, "eval")
    assert code == 2
    code, _, err = _cli(["train", "--resume", str(path)])
    assert code == 2 and "Traceback" not in err
    assert not marker.exists() and not os.path.exists("pwned")
