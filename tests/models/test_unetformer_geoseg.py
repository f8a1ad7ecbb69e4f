"""UNetFormerHead == GeoSeg's UNetFormer ``Decoder`` (WangLibo1995/GeoSeg, geoseg/models/UNetFormer.py).

The oracle below is a re-derivation written from reading GeoSeg's code: plain functional torch over a state dict
in GeoSeg's key layout (key names and shapes also written here from GeoSeg), computed in float64 with unfold/fold
window attention, explicit shifted-sum pooling and concatenated reflection rows; the module under test is float32.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lsknet.errors import CheckpointError
from lsknet.models.segmentation import build_segmenter
from lsknet.models.unetformer import UNetFormerHead

HEADS = 8  # GeoSeg's Decoder hard-codes num_heads=8 in its three blocks


# ----------------------------------------------------------------------------------------- GeoSeg key layout
def geoseg_decoder_shapes(enc: tuple[int, int, int, int], d: int, k: int, ws: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cout, cin, kk, bias=False):
        shapes[f"{name}.weight"] = (cout, cin, kk, kk)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("pre_conv.0", d, enc[3], 1)
    bn("pre_conv.1", d)
    for b in ("b4", "b3", "b2"):
        bn(f"{b}.norm1", d)
        shapes[f"{b}.attn.relative_position_bias_table"] = ((2 * ws - 1) ** 2, HEADS)
        shapes[f"{b}.attn.relative_position_index"] = (ws * ws, ws * ws)
        conv(f"{b}.attn.qkv.0", 3 * d, d, 1)
        conv(f"{b}.attn.local1.0", d, d, 3)
        bn(f"{b}.attn.local1.1", d)
        conv(f"{b}.attn.local2.0", d, d, 1)
        bn(f"{b}.attn.local2.1", d)
        conv(f"{b}.attn.proj.0", d, 1, ws)
        bn(f"{b}.attn.proj.1", d)
        conv(f"{b}.attn.proj.2", d, d, 1)
        conv(f"{b}.mlp.fc1", 4 * d, d, 1, bias=True)
        conv(f"{b}.mlp.fc2", d, 4 * d, 1, bias=True)
        bn(f"{b}.norm2", d)
    for p, c in (("p3", enc[2]), ("p2", enc[1]), ("p1", enc[0])):
        conv(f"{p}.pre_conv.0", d, c, 1)
        shapes[f"{p}.weights"] = (2,)
        conv(f"{p}.post_conv.0", d, d, 3)
        bn(f"{p}.post_conv.1", d)
    conv("p1.pa.0", d, 1, 3, bias=True)
    conv("p1.ca.1.0", d // 16, d, 1)
    conv("p1.ca.3.0", d, d // 16, 1)
    conv("p1.shortcut.0", d, d, 1)
    bn("p1.shortcut.1", d)
    conv("p1.proj.0", d, 1, 3)
    bn("p1.proj.1", d)
    conv("p1.proj.2", d, d, 1)
    conv("aux_head.conv.0", d, d, 3)
    bn("aux_head.conv.1", d)
    conv("aux_head.conv_out.0", k, d, 1)
    conv("segmentation_head.0.0", d, d, 3)
    bn("segmentation_head.0.1", d)
    conv("segmentation_head.2.0", k, d, 1)
    return shapes


def relative_index(ws: int) -> torch.Tensor:
    idx = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for i, j in itertools.product(range(ws * ws), repeat=2):
        dy, dx = i // ws - j // ws, i % ws - j % ws
        idx[i, j] = (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)
    return idx


def random_geoseg_state(enc, d, k, ws, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in geoseg_decoder_shapes(enc, d, k, ws).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("relative_position_index"):
            sd[key] = relative_index(ws)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(("running_mean", ".bias", "bias_table")):
            sd[key] = 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("norm1.weight") or key.endswith("norm2.weight") or ".1.weight" in key:
            sd[key] = 1 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith(".weights"):
            sd[key] = torch.rand(shape, generator=g) * 2 - 0.3  # one may be negative (ReLU'd away)
        else:  # conv weights, fan-in scaled
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            sd[key] = torch.randn(shape, generator=g) / fan_in**0.5
    return sd


# ----------------------------------------------------------------------------------------- functional oracle
class GeoSegOracle:
    def __init__(self, sd: dict[str, torch.Tensor], ws: int):
        self.p = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
        self.ws = ws

    def conv(self, x, name, pad=0, groups=1):
        return F.conv2d(x, self.p[f"{name}.weight"], self.p.get(f"{name}.bias"), padding=pad, groups=groups)

    def bn(self, x, name):
        p = self.p
        return F.batch_norm(
            x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p[f"{name}.weight"], p[f"{name}.bias"], False, 0.0
        )

    def attention(self, x, name):
        b, c, h, w = x.shape
        ws, hd = self.ws, c // HEADS
        local = self.bn(self.conv(x, f"{name}.local1.0", 1), f"{name}.local1.1")
        local = local + self.bn(self.conv(x, f"{name}.local2.0"), f"{name}.local2.1")
        if w % ws:  # GeoSeg pads (0, ws - w % ws): 2-tuple reflect on 4-d input, which newer torch refuses
            x = F.pad(x, (0, ws - w % ws, 0, 0), mode="reflect")
        if h % ws:
            x = F.pad(x, (0, 0, 0, ws - h % ws), mode="reflect")
        hp, wp = x.shape[-2:]
        qkv = F.unfold(self.conv(x, f"{name}.qkv.0"), ws, stride=ws)  # (b, 3c*ws*ws, L) ordered (ch, y, x)
        n = qkv.shape[-1]
        qkv = qkv.reshape(b, 3, HEADS, hd, ws * ws, n).permute(1, 0, 5, 2, 4, 3)  # (3, b, L, heads, ws*ws, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        dots = torch.einsum("blhid,blhjd->blhij", q, k) * hd**-0.5
        table = self.p[f"{name}.relative_position_bias_table"]
        bias = torch.empty(HEADS, ws * ws, ws * ws, dtype=table.dtype)
        for i in range(ws * ws):
            for j in range(ws * ws):
                bias[:, i, j] = table[(i // ws - j // ws + ws - 1) * (2 * ws - 1) + (i % ws - j % ws + ws - 1)]
        attn = (dots + bias).softmax(-1)
        out = torch.einsum("blhij,blhjd->bhdil", attn, v).reshape(b, c * ws * ws, n)
        out = F.fold(out, (hp, wp), ws, stride=ws)[:, :, :h, :w]
        # cross-shaped pooling: 1 reflected row (column), then 3 zero rows each side, mean of 8 with the zeros
        z = ws // 2 - 1
        rows = torch.cat([out, out[:, :, h - 2 : h - 1]], 2)
        rows = F.pad(rows, (0, 0, z, z))
        cols = torch.cat([out, out[..., w - 2 : w - 1]], 3)
        cols = F.pad(cols, (z, z, 0, 0))
        pooled = sum(rows[:, :, t : t + h] for t in range(ws)) / ws + sum(cols[..., t : t + w] for t in range(ws)) / ws
        y = pooled + local
        y = torch.cat([y, y[:, :, h - 2 : h - 1]], 2)
        y = torch.cat([y, y[..., w - 2 : w - 1]], 3)
        y = self.bn(self.conv(y, f"{name}.proj.0", (ws - 1) // 2, groups=c), f"{name}.proj.1")
        return self.conv(y, f"{name}.proj.2")[:, :, :h, :w]

    def block(self, x, name):
        x = x + self.attention(self.bn(x, f"{name}.norm1"), f"{name}.attn")
        y = F.relu6(self.conv(self.bn(x, f"{name}.norm2"), f"{name}.mlp.fc1"))
        return x + self.conv(y, f"{name}.mlp.fc2")

    def fuse(self, x, res, name):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        wts = F.relu(self.p[f"{name}.weights"])
        wts = wts / (wts.sum() + 1e-8)
        x = wts[0] * self.conv(res, f"{name}.pre_conv.0") + wts[1] * x
        return F.relu6(self.bn(self.conv(x, f"{name}.post_conv.0", 1), f"{name}.post_conv.1"))

    def refine(self, x, res):
        c = x.shape[1]
        x = self.fuse(x, res, "p1")
        shortcut = self.bn(self.conv(x, "p1.shortcut.0"), "p1.shortcut.1")
        pa = torch.sigmoid(self.conv(x, "p1.pa.0", 1, groups=c)) * x
        pooled = x.mean((2, 3), keepdim=True)
        ca = torch.sigmoid(self.conv(F.relu6(self.conv(pooled, "p1.ca.1.0")), "p1.ca.3.0")) * x
        y = self.bn(self.conv(pa + ca, "p1.proj.0", 1, groups=c), "p1.proj.1")
        return F.relu6(self.conv(y, "p1.proj.2") + shortcut)

    def __call__(self, res1, res2, res3, res4, h, w):
        res1, res2, res3, res4 = (r.double() for r in (res1, res2, res3, res4))
        x4 = self.block(self.bn(self.conv(res4, "pre_conv.0"), "pre_conv.1"), "b4")
        x3 = self.block(self.fuse(x4, res3, "p3"), "b3")
        x2 = self.block(self.fuse(x3, res2, "p2"), "b2")
        x = self.refine(x2, res1)
        x = F.relu6(self.bn(self.conv(x, "segmentation_head.0.0", 1), "segmentation_head.0.1"))
        logits = F.interpolate(self.conv(x, "segmentation_head.2.0"), size=(h, w), mode="bilinear")
        ah = F.interpolate(x4, scale_factor=4, mode="bilinear", align_corners=True)
        ah = ah + F.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=True) + x2
        ah = F.relu6(self.bn(self.conv(ah, "aux_head.conv.0", 1), "aux_head.conv.1"))
        aux = F.interpolate(self.conv(ah, "aux_head.conv_out.0"), size=(h, w), mode="bilinear")
        return logits, aux


# ----------------------------------------------------------------------------------------- tests
def test_geoseg_decoder_state_dict_loads_strictly_and_gives_geoseg_logits_at_512():
    enc, d, k, ws, size = (64, 128, 256, 512), 64, 6, 8, 512
    sd = random_geoseg_state(enc, d, k, ws)
    head = UNetFormerHead(enc, k, d, 0.1, ws)
    own = head.state_dict()
    assert {n: tuple(t.shape) for n, t in own.items()} == geoseg_decoder_shapes(enc, d, k, ws)
    head.load_state_dict(sd, strict=True)
    head.eval()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, c, size // s, size // s, generator=g) for c, s in zip(enc, (4, 8, 16, 32))]
    with torch.no_grad():
        logits, aux = head(feats, return_aux=True)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        aux = F.interpolate(aux, size=(size, size), mode="bilinear", align_corners=False)
    want_logits, want_aux = GeoSegOracle(sd, ws)(*feats, size, size)
    assert want_logits.abs().max() > 0.5  # the comparison is not between near-zero maps
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(aux.double(), want_aux, atol=1e-4, rtol=0)


def test_maps_not_multiple_of_the_window_match_geoseg():
    # stride-32 map 6 x 10: the window attention reflect-pads 2 rows / 6 columns; all borders follow GeoSeg
    enc, d, k, ws = (16, 24, 32, 40), 32, 3, 8
    sd = random_geoseg_state(enc, d, k, ws, seed=3)
    head = UNetFormerHead(enc, k, d, 0.1, ws)
    head.load_state_dict(sd, strict=True)
    head.eval()
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, c, 48 // s, 80 // s, generator=g) for c, s in zip(enc, (1, 2, 4, 8))]
    with torch.no_grad():
        logits, aux = head(feats, return_aux=True)
    want_logits, want_aux = GeoSegOracle(sd, ws)(*feats, 48, 80)
    assert logits.shape == (2, 3, 48, 80)
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-4, rtol=0)
    aux = F.interpolate(aux, size=(48, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(aux.double(), want_aux, atol=1e-4, rtol=0)


def test_geoseg_resnet18_checkpoint_loads_into_build_segmenter(tmp_path):
    timm = pytest.importorskip("timm")
    enc_model = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4), pretrained=False)
    enc_model.eval()
    enc = tuple(enc_model.feature_info.channels())
    sd = random_geoseg_state(enc, 64, 6, 8, seed=5)
    ckpt = {f"net.backbone.{n}": t for n, t in enc_model.state_dict().items()}
    ckpt.update({f"net.decoder.{n}": t for n, t in sd.items()})
    torch.save({"state_dict": ckpt, "epoch": 3}, tmp_path / "unetformer-r18-512-crop-ms-e30.ckpt")
    model = build_segmenter(
        "resnet18", "unetformer", 6, checkpoint=tmp_path / "unetformer-r18-512-crop-ms-e30.ckpt",
        backbone_kwargs={"out_indices": (1, 2, 3, 4)},
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(x)
        feats = enc_model(x)
    want, _ = GeoSegOracle(sd, 8)(*feats, 512, 512)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)


def test_old_lsknet_head_layout_is_a_clear_error(tmp_path):
    old = {"decode_head.pre4.0.weight": torch.zeros(64, 256, 1, 1), "decode_head.block4.norm1.weight": torch.ones(64)}
    torch.save({"state_dict": {f"model.{n}": t for n, t in old.items()}}, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="older lsknet"):
        build_segmenter("lsknet_t", "unetformer", 4, checkpoint=tmp_path / "old.ckpt")
