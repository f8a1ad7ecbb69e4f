"""Receptive fields, ERF, area ratio, selection maps and the context statistic against hand-made answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import lsknet  # noqa: F401
from lsknet.analysis import area_ratio, effective_receptive_field, receptive_field, selection_maps
from lsknet.analysis.selection import context_statistic, expected_rf_maps, object_context
from lsknet.cli.main import main


def test_receptive_field_rule():
    assert receptive_field([(5, 1), (7, 3)]) == 23
    assert receptive_field([(3, 1), (5, 2), (7, 3)]) == 29
    assert receptive_field([(23, 1)]) == 23
    assert receptive_field([(7, 1)] * 3) == 19  # 7 + 6 + 6


@pytest.mark.parametrize("dilation", [1, 3])
def test_erf_of_a_dilated_depthwise_conv_is_its_7x7_lattice(dilation):
    conv = nn.Conv2d(3, 3, 7, dilation=dilation, padding=3 * dilation, groups=3, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    images = [torch.rand(2, 3, 31, 31) + 0.1, torch.rand(1, 3, 31, 31) + 0.1]  # positive: centre output > 0
    erf = effective_receptive_field(conv, images)
    assert erf.shape == (31, 31)
    want = np.zeros((31, 31), bool)
    offsets = 15 + dilation * np.arange(-3, 4)
    want[np.ix_(offsets, offsets)] = True
    assert np.array_equal(erf > 0, want)
    assert np.allclose(erf[want], 3 * 3)  # 3 images x 3 channels, d y / d x = weight = 1
    assert not conv.weight.requires_grad or conv.weight.grad is None


def test_area_ratio_known_answers():
    delta = np.zeros((9, 9))
    delta[4, 4] = 7.0
    assert area_ratio(delta, 0.5) == pytest.approx(1 / 81)
    flat = np.ones((5, 5))
    assert area_ratio(flat, 0.3) == pytest.approx(9 / 25)  # side 3 holds 9 > 7.5 of 25
    assert area_ratio(flat, 0.35) == pytest.approx(9 / 25)  # 9 > 8.75
    assert area_ratio(flat, 0.37) == pytest.approx(1.0)
    assert area_ratio(flat, 0.99) == pytest.approx(1.0)


def _gates_by_hand(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Re-derive the gates from each LSK module's input with functional convs (official code read, not ours)."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if name.endswith("attn.spatial_gating_unit"):
            key = name.removeprefix("model.")[: -len(".attn.spatial_gating_unit")]
            handles.append(mod.register_forward_pre_hook(lambda m, a, key=key: inputs.__setitem__(key, a[0])))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    out = {}
    for key, u in inputs.items():
        stage, j = key.split(".")
        sgu = getattr(model, stage)[int(j)].attn.spatial_gating_unit
        c = u.shape[1]
        a = F.conv2d(u, sgu.conv0.weight, sgu.conv0.bias, padding=2, groups=c)
        b = F.conv2d(a, sgu.conv_spatial.weight, sgu.conv_spatial.bias, padding=9, dilation=3, groups=c)
        a, b = F.conv2d(a, sgu.conv1.weight, sgu.conv1.bias), F.conv2d(b, sgu.conv2.weight, sgu.conv2.bias)
        cat = torch.cat([a, b], 1)
        pooled = torch.cat([cat.mean(1, keepdim=True), cat.max(1, keepdim=True).values], 1)
        out[key] = torch.sigmoid(F.conv2d(pooled, sgu.conv_squeeze.weight, sgu.conv_squeeze.bias, padding=3))
    return out


def test_selection_maps_equal_gates_recomputed_by_hand():
    torch.manual_seed(0)
    model = timm.create_model("lsknet_t", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    gates = selection_maps(model, x)
    assert list(gates) == [f"block{s}.{j}" for s, d in zip(range(1, 5), (3, 3, 5, 2)) for j in range(d)]
    want = _gates_by_hand(model, x)
    for key, g in gates.items():
        s = int(key[5])
        assert g.shape == (2, 2, 64 // 2 ** (s + 1), 64 // 2 ** (s + 1))
        torch.testing.assert_close(g, want[key], rtol=1e-5, atol=1e-6)
    feats = timm.create_model("lsknet_t", features_only=True)
    feats.load_state_dict({f"model.{k}": v for k, v in model.state_dict().items()}, strict=False)
    torch.testing.assert_close(selection_maps(feats, x)["block4.1"], gates["block4.1"])


def test_context_statistic_by_hand():
    # one stage-1 block (stride 4), kernels (5,1),(7,3): RF 5 and 23 -> areas 20^2 = 400 and 92^2 = 8464
    g = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    g[0, 0] = 0.75
    g[0, 1] = 0.25
    erf = expected_rf_maps({"block1.0": g}, [(5, 1), (7, 3)])
    expect = 0.75 * 400 + 0.25 * 8464
    assert torch.allclose(erf["block1.0"], torch.full((1, 8, 8), expect, dtype=torch.float64))
    square = np.array([[[0, 0], [8, 0], [8, 8], [0, 8]]], float)  # 64 px^2 covering feature centres (2,2),(6,2)...
    big = np.array([[[0, 0], [32, 0], [32, 32], [0, 32]]], float)
    vals = object_context(erf, np.concatenate([square, big]))
    assert vals == pytest.approx([expect / 64, expect / 1024])
    stat = context_statistic({"car": [vals[0]], "field": [vals[1], float("nan")]})
    assert stat["car"]["normalised"] == 1.0 and stat["field"]["normalised"] == pytest.approx(64 / 1024)
    assert stat["field"]["count"] == 1


def test_analyze_cli_erf_and_selection(tmp_path, capsys):
    out = tmp_path / "erf"
    assert main(["analyze", "erf", "--model", "lsknet_t", "--model", "resnet18", "--synthetic", "1", "--size", "32",
                 "--out", str(out)]) == 0
    data = json.loads((out / "erf.json").read_text())
    assert set(data["models"]) == {"lsknet_t", "resnet18"}
    for m in data["models"].values():
        assert len(m["stages"]) == 4
        for st in m["stages"]:
            r = [st["area_ratio"][k] for k in ("0.2", "0.3", "0.5", "0.99")]
            assert all(0 < a <= 1 for a in r) and r == sorted(r)
    assert all((out / f"erf_stage{s}.png").stat().st_size > 0 for s in range(1, 5))

    from lsknet.data.synthetic import generate_dota_scenes

    generate_dota_scenes(tmp_path / "syn", num_images=1, size=64, objects_per_image=(3, 4))
    img = next((tmp_path / "syn" / "images").iterdir())
    sel = tmp_path / "sel"
    ckpt = tmp_path / "w.pth"
    torch.save(timm.create_model("lsknet_t", num_classes=0).state_dict(), ckpt)
    args = ["analyze", "selection", str(img), "--checkpoint", str(ckpt), "--labels", str(tmp_path / "syn" / "labelTxt"),
            "--out", str(sel)]
    assert main(args) == 0
    summary = json.loads((sel / "selection.json").read_text())
    assert summary["model"] == "lsknet_t" and len(summary["images"][img.name]["blocks"]) == 13
    context = json.loads((sel / "context.json").read_text())
    assert max(c["normalised"] for c in context["classes"].values()) == 1.0
    assert (sel / "context.png").is_file() and (sel / f"{img.stem}_selection.png").is_file()
    assert main(["analyze", "selection", str(img), "--model", "lsknet_t", "--lsk-selection", "none",
                 "--out", str(sel)]) == 2
