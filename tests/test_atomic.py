"""lsknet.atomic.atomic_target: the whole new file or the old one, never a partial file or a stray temp file."""

from __future__ import annotations

import pytest

from lsknet.atomic import atomic_target


def test_success_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_target(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing visible under the final name before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failure_keeps_the_previous_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_target(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
