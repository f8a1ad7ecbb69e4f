"""UNetFormer / UPerNet segmenters: shapes, window attention against a naive oracle, parameter count from the
paper, checkpoints, losses, smp encoders."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.segmentation import SegmentationLoss, build_segmenter, dice_loss
from lsknet.models.unetformer import GlobalLocalAttention

torch.manual_seed(0)


@pytest.mark.parametrize("head", ["unetformer", "upernet"])
def test_any_input_size_gives_input_sized_logits(head):
    kw = {} if head == "unetformer" else {"decode_channels": 32, "aux_channels": 16}
    model = build_segmenter("lsknet_t", head, num_classes=5, **kw)
    x = torch.randn(2, 3, 70, 45)  # not multiples of 32 nor of the window
    model.train()
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 5, 70, 45) and aux.shape == (2, 5, 70, 45)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5, 70, 45)
    assert model.num_classes == 5


def test_no_aux_head():
    model = build_segmenter("lsknet_t", "upernet", num_classes=3, aux_head=False, decode_channels=16)
    assert model.aux_head is None
    _, aux = model.forward_with_aux(torch.randn(2, 3, 64, 64))
    assert aux is None


def _naive_window_attention(gla: GlobalLocalAttention, x: torch.Tensor) -> torch.Tensor:
    """Per-window loop with scaled_dot_product_attention and an explicitly built relative-position bias."""
    b, c, h, w = x.shape
    ws, heads = gla.ws, gla.num_heads
    hd = c // heads
    qkv = gla.qkv(x)
    out = torch.zeros_like(x)
    table = gla.relative_position_bias_table  # ((2ws-1)^2, heads)
    bias = torch.empty(heads, ws * ws, ws * ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            dy = i // ws - j // ws + ws - 1
            dx = i % ws - j % ws + ws - 1
            bias[:, i, j] = table[dy * (2 * ws - 1) + dx]
    for y0 in range(0, h, ws):
        for x0 in range(0, w, ws):
            win = qkv[:, :, y0 : y0 + ws, x0 : x0 + ws].reshape(b, 3, heads, hd, ws * ws)
            q, k, v = (win[:, s].transpose(-1, -2) for s in range(3))  # (b, heads, ws*ws, hd)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            out[:, :, y0 : y0 + ws, x0 : x0 + ws] = o.transpose(-1, -2).reshape(b, c, ws, ws)
    return out


def test_window_attention_matches_naive_loop():
    gla = GlobalLocalAttention(dim=16, num_heads=4, window_size=4).eval()
    with torch.no_grad():
        gla.relative_position_bias_table.normal_()
        x = torch.randn(2, 16, 8, 12)
        got = gla.window_attention(x)
        want = _naive_window_attention(gla, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_attention_pads_to_the_window():
    gla = GlobalLocalAttention(dim=16, num_heads=2, window_size=8).eval()
    with torch.no_grad():
        for h, w in [(13, 9), (3, 2), (8, 8)]:
            assert gla(torch.randn(1, 16, h, w)).shape == (1, 16, h, w)


def test_unetformer_resnet18_parameter_count_matches_paper():
    # The UNetFormer paper (Table 6) reports 11.7 M parameters for UNetFormer with a ResNet-18 encoder.
    model = build_segmenter("resnet18", "unetformer", num_classes=6, backbone_kwargs={"out_indices": (1, 2, 3, 4)})
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 11.7


def test_unknown_head_and_backbone():
    with pytest.raises(ConfigError, match="unknown segmentation head"):
        build_segmenter("lsknet_t", "deeplab", 3)


def test_backbone_and_full_checkpoints(tmp_path):
    import timm

    import lsknet.models.backbone  # noqa: F401

    classifier = timm.create_model("lsknet_t", num_classes=1000)  # layout of the official ImageNet checkpoint
    torch.save({"state_dict": classifier.state_dict()}, tmp_path / "lsk_t_backbone.pth")
    model = build_segmenter("lsknet_t", "unetformer", 4, backbone_checkpoint=tmp_path / "lsk_t_backbone.pth")
    torch.testing.assert_close(
        model.backbone.state_dict()["model.patch_embed1.proj.weight"],
        classifier.state_dict()["patch_embed1.proj.weight"],
    )
    # the backbone-only file passed as `checkpoint` also goes to the backbone
    model2 = build_segmenter("lsknet_t", "unetformer", 4, checkpoint=tmp_path / "lsk_t_backbone.pth")
    torch.testing.assert_close(
        model2.backbone.state_dict()["model.block1.0.attn.proj_1.weight"],
        classifier.state_dict()["block1.0.attn.proj_1.weight"],
    )

    # full checkpoint as written by Lightning (module attribute `model`)
    trained = build_segmenter("lsknet_t", "unetformer", 4).eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "seg.ckpt")
    loaded = build_segmenter("lsknet_t", "unetformer", 4, checkpoint=tmp_path / "seg.ckpt").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))
    with pytest.raises(CheckpointError, match="num_classes"):
        build_segmenter("lsknet_t", "unetformer", 7, checkpoint=tmp_path / "seg.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        build_segmenter("lsknet_t", "unetformer", 4, checkpoint=tmp_path / "missing.ckpt")


def test_create_model_factory():
    import lsknet.models.factory as factory

    model = factory.create_model("lsknet_s_upernet", num_classes=3, decode_channels=32)
    assert model.num_classes == 3 and model.backbone.feature_info.channels() == [64, 128, 320, 512]


def test_cross_entropy_with_label_smoothing_by_hand():
    loss = SegmentationLoss(dice_weight=0.0, aux_weight=0.0)
    logits = torch.tensor([2.0, 0.0]).reshape(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    p0 = math.exp(2) / (math.exp(2) + 1)
    eps = 0.05
    want = -(1 - eps + eps / 2) * math.log(p0) - (eps / 2) * math.log(1 - p0)
    assert loss(logits, target)["loss"].item() == pytest.approx(want, rel=1e-5)


def test_dice_by_hand():
    # probabilities [0.5, 0.5] on 2 pixels, both class 0: inter0 = 1, card0 = 1 + 2 -> dice0 = (2 + s)/(3 + s);
    # class 1 is absent (counts 0): GeoSeg averages over all classes, "present" over class 0 only
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    s = 0.05
    assert dice_loss(logits, target).item() == pytest.approx((1 - (2 + s) / (3 + s)) / 2, rel=1e-5)
    assert dice_loss(logits, target, average="present").item() == pytest.approx(1 - (2 + s) / (3 + s), rel=1e-5)


def _geoseg_loss_by_hand(logits, target, aux, ignore=255, eps=0.05, smooth=0.05):
    """GeoSeg UnetFormerLoss re-derived with explicit loops: SoftCE (fairseq label smoothing, ignored pixels 0, mean
    over all pixels) + DiceLoss (multiclass, smooth 0.05, absent classes 0, mean over all classes) + 0.4 SoftCE(aux)."""
    n, k, h, w = logits.shape
    pixels = [(b, y, x, int(target[b, y, x])) for b in range(n) for y in range(h) for x in range(w)]
    pixels = [p for p in pixels if p[3] != ignore]

    def soft_ce(lg):
        total = 0.0
        for b, y, x, t in pixels:
            logp = torch.log_softmax(lg[b, :, y, x].double(), 0)
            total += (1 - eps) * -logp[t].item() + eps / k * -logp.sum().item()
        return total / (n * h * w)

    prob = torch.softmax(logits.double(), 1)
    dice_sum = 0.0
    for c in range(k):
        inter = card = count = 0.0
        for b, y, x, t in pixels:
            is_c = float(t == c)
            inter += prob[b, c, y, x].item() * is_c
            card += prob[b, c, y, x].item() + is_c
            count += is_c
        if count > 0:
            dice_sum += 1 - (2 * inter + smooth) / max(card + smooth, 1e-7)
    return soft_ce(logits) + dice_sum / k + 0.4 * soft_ce(aux)


def test_loss_averaging_matches_geoseg_by_hand():
    g = torch.Generator().manual_seed(0)
    logits, aux = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)  # class 3 absent
    target[0, :2] = 255
    got = SegmentationLoss()(logits, target, aux)["loss"].item()
    assert got == pytest.approx(_geoseg_loss_by_hand(logits, target, aux), rel=1e-5)
    # the opt-in "valid" averaging differs (CE over valid pixels, Dice over present classes)
    assert SegmentationLoss(averaging="valid")(logits, target, aux)["loss"].item() != pytest.approx(got, rel=1e-3)


def test_ignored_pixels_contribute_nothing():
    loss = SegmentationLoss()
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = 255
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    aux = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = loss(logits, target, aux)
    assert set(out) == {"loss", "loss_ce", "loss_dice", "loss_aux"}
    out["loss"].backward()
    assert logits.grad[:, :, :4].abs().max() == 0 and aux.grad[:, :, :4].abs().max() == 0
    assert logits.grad[:, :, 4:].abs().max() > 0
    # changing logits at ignored pixels leaves the loss unchanged
    changed = logits.detach().clone()
    changed[:, :, :4] += 100
    assert loss(changed, target, aux.detach())["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    # all ignored -> zero loss, no NaN
    assert loss(logits, torch.full_like(target, 255), aux)["loss"].item() == 0.0


def test_smp_timm_universal_encoder():
    smp = pytest.importorskip("segmentation_models_pytorch")
    import lsknet.models.backbone  # noqa: F401

    archs = [smp.Unet] + ([smp.UPerNet] if hasattr(smp, "UPerNet") else [])
    for arch in archs:
        model = arch("tu-lsknet_s", encoder_weights=None, classes=4).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
