"""``lsknet convert`` and ``lsknet benchmark`` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from lsknet.cli.main import main


def _detector_checkpoint(path, name="lsknet_t", seed=0):
    """An MMRotate-style detector file: {'meta', 'state_dict'} with backbone./neck. prefixes and an EMA-less layout."""
    torch.manual_seed(seed)
    backbone = timm.create_model(name, num_classes=0).state_dict()
    state = {"backbone." + k: v for k, v in backbone.items()}
    state["neck.fpn_convs.0.conv.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save({"meta": {"epoch": 12, "CLASSES": ("plane", "ship")}, "state_dict": state}, path)
    return backbone


def test_convert_detector_to_clean_backbone(tmp_path, capsys):
    backbone = _detector_checkpoint(tmp_path / "det.pth")
    out = tmp_path / "clean" / "lsknet_t.pth"
    assert main(["convert", str(tmp_path / "det.pth"), str(out)]) == 0
    assert "lsknet_t" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["arch"] == "lsknet_t" and saved["meta"]["num_classes"] == 0
    assert saved["state_dict"].keys() == backbone.keys()
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in backbone.items())
    assert [p.name for p in out.parent.iterdir()] == ["lsknet_t.pth"]  # no temp file left behind
    # the clean file loads everywhere, e.g. straight into timm
    model = timm.create_model("lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)), num_classes=0)
    assert torch.equal(model.state_dict()["block3.4.mlp.fc1.weight"], backbone["block3.4.mlp.fc1.weight"])


def test_convert_keeps_head_and_prefers_ema(tmp_path):
    torch.manual_seed(0)
    plain, ema = timm.create_model("lsknet_t").state_dict(), timm.create_model("lsknet_t").state_dict()
    torch.save({"state_dict": plain, "state_dict_ema": ema, "optimizer": {}}, tmp_path / "in.pth")
    assert main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "ema.pth")]) == 0
    assert main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "raw.pth"), "--no-ema"]) == 0
    got_ema = torch.load(tmp_path / "ema.pth", weights_only=True)["state_dict"]
    got_raw = torch.load(tmp_path / "raw.pth", weights_only=True)["state_dict"]
    assert torch.equal(got_ema["head.weight"], ema["head.weight"]) and got_ema["head.weight"].shape == (1000, 256)
    assert torch.equal(got_raw["patch_embed1.proj.weight"], plain["patch_embed1.proj.weight"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "lsknet_s"], "variant"),  # a T file declared as S
        ([], None),
    ],
)
def test_convert_user_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    _detector_checkpoint(tmp_path / "det.pth")
    src = tmp_path / "det.pth" if message else tmp_path / "missing.pth"
    code = main(["convert", str(src), str(tmp_path / "out.pth"), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (message or "not found") in err
    assert not (tmp_path / "out.pth").exists()


def test_benchmark_small_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["benchmark", "--model", "lsknet_t", "--size", "64", "--repeats", "1", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "GFLOPs" in text and "GMACs" in text and "4,247,190" in text
    result = json.loads(out.read_text())
    for key in ("params", "gflops", "eager_ms", "optimized_ms", "speedup", "max_rel_diff"):
        assert key in result
    assert result["params"] == 4_247_190 and result["max_rel_diff"] < 1e-4
    # hand count of the multiply-adds at 64x64 (conv + linear layers), independent of the FLOP counter
    assert result["gflops"] == pytest.approx(2 * _macs_lsknet_t(64) / 1e9, rel=1e-9)


def _macs_lsknet_t(size: int) -> int:
    dims, depths, ratios = (32, 64, 160, 256), (3, 3, 5, 2), (8, 8, 4, 4)
    total, c_in, hw = 0, 3, size
    for i, (c, d, r) in enumerate(zip(dims, depths, ratios)):
        k, s = (7, 4) if i == 0 else (3, 2)
        hw = (hw + 2 * (k // 2) - k) // s + 1
        n = hw * hw
        total += n * c * c_in * k * k  # patch embedding
        hid = c * r
        per_pixel = (
            2 * c * c  # proj_1, proj_2
            + c * 25
            + c * 49  # dw 5x5, dw 7x7 dilated
            + 2 * c * (c // 2)
            + (c // 2) * c  # conv1, conv2, conv
            + 2 * 2 * 49  # conv_squeeze
            + 2 * c * hid
            + hid * 9  # fc1, fc2, dw 3x3
        )
        total += d * n * per_pixel
        c_in = c
    return total + 256 * 1000  # classifier


def test_benchmark_rejects_unknown_model(capsys):
    assert main(["benchmark", "--model", "resnet50", "--size", "32"]) == 2
    assert "lsknet_t" in capsys.readouterr().err
