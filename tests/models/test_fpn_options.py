"""FPN options of MMDetection 2.x used by the official S2A-Net / R3Det configs (start_level, add_extra_convs,
relu_before_extra_convs): key layout, parameter totals and a forward pass re-derived with plain ``F.conv2d`` from
the MMDetection ``FPN.forward`` description (laterals, top-down nearest upsampling, 3x3 smoothing, extra levels)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsknet.models.fpn import FPN

T_CHANNELS = [32, 64, 160, 256]
S_CHANNELS = [64, 128, 320, 512]


def _official_keys(in_channels, start_level, extra_source, num_outs=5, out=256):
    """Keys and shapes of mmdet's FPN with ConvModule(no norm) as written from its __init__."""
    keys = {}
    used = in_channels[start_level:]
    for i, c in enumerate(used):
        keys[f"lateral_convs.{i}.conv.weight"] = (out, c, 1, 1)
        keys[f"lateral_convs.{i}.conv.bias"] = (out,)
        keys[f"fpn_convs.{i}.conv.weight"] = (out, out, 3, 3)
        keys[f"fpn_convs.{i}.conv.bias"] = (out,)
    for j in range(num_outs - len(used)):
        c = in_channels[-1] if j == 0 and extra_source == "on_input" else out
        keys[f"fpn_convs.{len(used) + j}.conv.weight"] = (out, c, 3, 3)
        keys[f"fpn_convs.{len(used) + j}.conv.bias"] = (out,)
    return keys


@pytest.mark.parametrize(
    ("channels", "total"),
    [
        # laterals 64/160/256 -> 256 (1x1 + bias): 16,640 + 41,216 + 65,792 = 123,648; three 3x3 256->256 output
        # convs 3 * 590,080 = 1,770,240; extra conv on the input C5 (256 -> 256, 3x3 s2) 590,080; extra conv
        # 256 -> 256 590,080; total 3,074,048
        (T_CHANNELS, 3_074_048),
        # laterals 128/320/512: 33,024 + 82,176 + 131,328 = 246,528; outputs 1,770,240; extra on C5 (512 -> 256)
        # 512 * 256 * 9 + 256 = 1,179,904; extra 590,080; total 3,786,752
        (S_CHANNELS, 3_786_752),
    ],
)
def test_official_s2anet_r3det_neck_layout_and_parameter_total(channels, total):
    fpn = FPN(channels, 256, num_outs=5, start_level=1, add_extra_convs="on_input")
    expected = _official_keys(channels, 1, "on_input")
    got = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in fpn.parameters()) == total
    fpn.load_state_dict({k: torch.randn(s) for k, s in expected.items()}, strict=True)


def _reference_forward(sd, feats, start_level, extra_source, relu_before, num_outs):
    """MMDetection FPN.forward re-derived with functional convs on the state dict."""

    def conv(name, x, stride=1):
        w, b = sd[f"{name}.conv.weight"], sd[f"{name}.conv.bias"]
        return F.conv2d(x, w, b, stride=stride, padding=w.shape[-1] // 2)

    used = feats[start_level:]
    lat = [conv(f"lateral_convs.{i}", f) for i, f in enumerate(used)]
    for i in range(len(lat) - 1, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [conv(f"fpn_convs.{i}", x) for i, x in enumerate(lat)]
    n = len(outs)
    if extra_source is None:
        while len(outs) < num_outs:
            outs.append(outs[-1][:, :, ::2, ::2])  # max-pool with kernel 1, stride 2 = subsampling
        return outs
    src = {"on_input": used[-1], "on_lateral": lat[-1], "on_output": outs[-1]}[extra_source]
    outs.append(conv(f"fpn_convs.{n}", src, stride=2))
    for i in range(n + 1, num_outs):
        x = F.relu(outs[-1]) if relu_before else outs[-1]
        outs.append(conv(f"fpn_convs.{i}", x, stride=2))
    return outs


@pytest.mark.parametrize("extra", [None, "on_input", "on_lateral", "on_output", True])
@pytest.mark.parametrize("relu_before", [False, True])
@pytest.mark.parametrize("start_level", [0, 1])
def test_forward_equals_functional_rederivation(extra, relu_before, start_level):
    torch.manual_seed(0)
    chans = [3, 5, 6, 7]
    fpn = FPN(chans, 4, num_outs=5, start_level=start_level, add_extra_convs=extra or False,
              relu_before_extra_convs=relu_before)
    with torch.no_grad():
        for p in fpn.parameters():
            p.normal_()
    feats = [torch.randn(2, c, 33 // 2**i + 1, 29 // 2**i + 1) for i, c in enumerate(chans)]
    outs = fpn(feats)
    source = "on_input" if extra is True else extra
    ref = _reference_forward(fpn.state_dict(), feats, start_level, source, relu_before, 5)
    assert len(outs) == 5
    for o, r in zip(outs, ref):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    if extra:
        keys = _official_keys(chans, start_level, source, out=4)
        assert {k: tuple(v.shape) for k, v in fpn.state_dict().items()} == keys


def test_default_is_unchanged_and_bad_options_are_refused():
    fpn = FPN(T_CHANNELS, 256, 5)
    assert len(fpn.fpn_convs) == 4 and fpn.start_level == 0 and fpn.add_extra_convs is False
    with pytest.raises(ValueError, match="add_extra_convs"):
        FPN(T_CHANNELS, 8, 5, add_extra_convs="on_top")
    with pytest.raises(ValueError, match="start_level"):
        FPN(T_CHANNELS, 8, 5, start_level=4)
    with pytest.raises(ValueError, match="num_outs"):
        FPN(T_CHANNELS, 8, 2, start_level=1)
