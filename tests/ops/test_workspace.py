"""lsknet.ops.workspace: buffers reused across passes, never shared by two live tensors of one pass."""

from __future__ import annotations

import copy
import pickle

import torch

from lsknet.ops.workspace import Workspace, persistent, scratch


def test_outside_a_workspace_every_request_is_a_fresh_tensor():
    like = torch.zeros(1)
    a = scratch("r", (4, 5), like)
    b = scratch("r", (4, 5), like)
    assert a.shape == (4, 5) and a.dtype == like.dtype
    assert a.data_ptr() != b.data_ptr()  # both alive: distinct memory
    c = persistent("k", (3,), like)
    d = persistent("k", (3,), like)
    assert c.data_ptr() != d.data_ptr()


def test_scratch_reuses_one_buffer_per_role_across_calls_and_passes():
    ws = Workspace()
    like = torch.zeros(1, dtype=torch.float64)
    with ws.active():
        a = scratch("tiles", (8, 8), like)
        b = scratch("tiles", (4, 2), like)  # smaller request: a prefix of the same buffer
        c = scratch("other", (8, 8), like)
    assert a.data_ptr() == b.data_ptr() and c.data_ptr() != a.data_ptr()
    assert a.dtype == torch.float64 and a.is_contiguous()
    with ws.active():
        assert scratch("tiles", (64,), like).data_ptr() == a.data_ptr()
        bigger = scratch("tiles", (65,), like)  # grows: a new buffer
    assert bigger.numel() == 65
    with ws.active():
        assert scratch("tiles", (10,), like).data_ptr() == bigger.data_ptr()
        f32 = scratch("tiles", (10,), torch.zeros(1))  # another dtype: a new buffer of that dtype
    assert f32.dtype == torch.float32


def test_persistent_gives_each_request_of_a_pass_its_own_buffer_and_the_same_ones_next_pass():
    ws = Workspace()
    like = torch.zeros(1)
    ptrs = []
    for _ in range(2):
        with ws.active():
            first = persistent("feat", (16,), like)
            second = persistent("feat", (16,), like)  # same key, same pass: must not alias the first
            other = persistent(("feat", 2), (16,), like)
            first.fill_(1.0)
            second.fill_(2.0)
            other.fill_(3.0)
            assert first.eq(1.0).all() and second.eq(2.0).all()
            ptrs.append((first.data_ptr(), second.data_ptr(), other.data_ptr()))
    assert len(set(ptrs[0])) == 3
    assert ptrs[0] == ptrs[1]  # kept between passes
    assert ws.nbytes == 3 * 16 * 4
    ws.clear()
    assert ws.nbytes == 0


def test_workspace_copies_and_pickles_start_empty():
    ws = Workspace()
    with ws.active():
        scratch("x", (100,), torch.zeros(1))
    assert ws.nbytes == 400
    for clone in (copy.deepcopy(ws), pickle.loads(pickle.dumps(ws))):
        assert isinstance(clone, Workspace) and clone.nbytes == 0
        with clone.active():
            assert scratch("x", (3,), torch.zeros(1)).numel() == 3


def test_tensors_that_need_grad_never_come_from_the_workspace():
    ws = Workspace()
    like = torch.zeros(2, requires_grad=True)
    with ws.active():
        a = scratch("g", (2,), like)
        b = scratch("g", (2,), like)
    assert a.data_ptr() != b.data_ptr() and ws.nbytes == 0
