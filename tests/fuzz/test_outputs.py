"""Output problems and unsafe names: a full disk or an unwritable destination gives one clear error and no partial
files; names that come from data or configs (class names in Task1 file names, run names) cannot write outside the
output folder."""

from __future__ import annotations

import contextlib
import errno
import io
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsknet.cli.main import main
from lsknet.data.dota import Task1Detections, check_file_name, write_task1_dir
from lsknet.errors import LSKNetError
from lsknet.tasks.runner import resolve_run_dir


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _patch_detections(folder) -> None:
    quad = np.array([[[10, 10], [30, 10], [30, 20], [10, 20]]], np.float64)
    dets = Task1Detections(np.array(["P0001__1024__0___0"], dtype=object), np.array([0.9]), quad)
    write_task1_dir(folder, {"plane": dets, "ship": Task1Detections()})


def test_disk_full_while_writing_gives_one_line_and_no_partial_files(tmp_path, monkeypatch):
    _patch_detections(tmp_path / "patches")
    real_write_text = pathlib.Path.write_text

    def full_disk_write_text(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)  # part reaches the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk_write_text)
    code, err = _cli(["dota", "merge", "--src", str(tmp_path / "patches"), "--dst", str(tmp_path / "merged"),
                      "--classes", "plane,ship"])
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lsknet dota: error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert list((tmp_path / "merged").rglob("*")) == []  # no temp files, no half-written Task1 files


def test_unwritable_destination_gives_one_line(tmp_path):
    _patch_detections(tmp_path / "patches")
    blocker = tmp_path / "merged"
    blocker.write_text("a file where the output folder should be")
    code, err = _cli(["dota", "merge", "--src", str(tmp_path / "patches"), "--dst", str(blocker),
                      "--classes", "plane,ship"])
    assert code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("lsknet dota: error:")]) == 1
    assert blocker.read_text().startswith("a file")


UNSAFE = ["../escape", "../../escape", "/tmp/abs", "a/b", "a\\b", "nul\x00byte"]  # ("Task1_..txt" is a plain name)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_class_names_cannot_write_outside_the_output_folder(tmp_path, name):
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(LSKNetError, match="unsafe class name"):
        write_task1_dir(out, {"plane": Task1Detections(), name: Task1Detections()})
    assert set(tmp_path.rglob("*")) == before  # nothing written at all, inside or outside


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=12))
def test_any_accepted_name_stays_inside_the_folder(tmp_path_factory, name):
    folder = tmp_path_factory.mktemp("o")
    try:
        check_file_name(name)
    except LSKNetError:
        return
    path = (folder / name).resolve()
    assert path.parent == folder.resolve() and path.name == name


@pytest.mark.parametrize("name", ["../../outside", "/etc", "x\x00"])
def test_run_names_from_configs_cannot_leave_runs(name, monkeypatch):
    monkeypatch.delenv("LSKNET_RUN_DIR", raising=False)
    with pytest.raises(LSKNetError, match="unsafe run name"):
        resolve_run_dir({"name": name, "task": "classify"})
