"""An inference-only copy of an LSKNet that computes the same function faster on CPU (and GPU).

What :func:`optimize_for_inference` does, each step exact up to float rounding:

- **Channels-last throughout.** Activations live as NHWC tensors; every 1x1 conv becomes a GEMM (``F.linear``
  on the channel axis), depthwise convs run on the channels-last view (oneDNN's fast path), LayerNorms act on the
  last axis, channel mean/max reduce the last axis. No layout conversions inside the network.
- **BatchNorm folding.** Each patch-embedding BN goes into its conv. The pre-norm BNs of a block (``norm1``,
  ``norm2``) are affine per channel and feed 1x1 convs (``attn.proj_1``, ``mlp.fc1``), so they fold into them
  exactly. The attention residual adds the *normalised* input ``a*x + c``; that term becomes a per-channel scale
  of the residual stream (``x * (1 + ls1*a)``) and a bias in ``proj_2``.
- **Layer-scale folding.** ``ls1`` scales ``proj_2``'s rows and ``ls2`` scales ``fc2``'s rows.
- **LSK channel mean without concatenation.** The channel-mean of ``cat(conv1(a), conv2(b))`` is linear in the
  inputs, so ``conv1``/``conv2`` get one extra output row each that produces it; the max is taken per branch.
- **Dilated depthwise conv by polyphase decomposition.** A 7x7 dilation-3 depthwise conv equals a dense 7x7
  depthwise conv on each of the 3x3 interleaved sub-grids (oneDNN's channels-last dilated depthwise path is very
  slow on CPU; the dense one is fast).
- **Fused kernels, no huge temporaries.** On CPU, ``dw3x3 -> GELU`` and ``proj_1 -> GELU`` run as single oneDNN
  kernels (checked once against the plain ops, else plain ops); residual updates are in place; the MLP (4-8x wider
  hidden activations) runs over bands of rows with a 1-row halo, so its temporaries stay a few MB: cache-resident
  and free of the page faults that fresh 30-130 MB tensors cost at 1024x1024. Its output bias is moved into
  ``proj_2`` so the band ends in one bias-free GEMM accumulating into the residual.
- optional ``torch.compile`` (``compile=True``) on top.

The result is in eval mode, has no gradients, and accepts the same NCHW input as the original. Outputs are NCHW
tensors (channels-last memory) with the original semantics: logits / pooled features for a classifier, the list of
stage maps for a timm ``features_only`` model.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsknet.models.backbone import LSKNet

__all__ = ["InferenceLSKNet", "benchmark", "count_flops", "optimize_for_inference"]

_log = logging.getLogger(__name__)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``a * x + c`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _pointwise(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """A 1x1 conv as a (out, in) matrix and bias."""
    return conv.weight.flatten(1), conv.bias


def _mkldnn_fused_ok() -> bool:
    """Whether oneDNN's fused conv/linear + GELU ops exist and agree with the plain ops (checked once)."""
    global _FUSED_OK
    if _FUSED_OK is None:
        try:
            x = torch.randn(1, 5, 6, 4)
            w, wd, b = torch.randn(4, 4), torch.randn(4, 1, 3, 3), torch.randn(4)
            got = torch.ops.mkldnn._convolution_pointwise(
                x.permute(0, 3, 1, 2), wd, b, [1, 1], [1, 1], [1, 1], 4, "gelu", [], "none"
            )
            ref = F.gelu(F.conv2d(x.permute(0, 3, 1, 2), wd, b, padding=1, groups=4))
            lin = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            _FUSED_OK = bool(
                torch.backends.mkldnn.is_available()
                and torch.allclose(got, ref, atol=1e-5)
                and got.is_contiguous(memory_format=torch.channels_last)
                and torch.allclose(lin, F.gelu(F.linear(x, w, b)), atol=1e-5)
            )
        except Exception:  # op missing in this build
            _FUSED_OK = False
    return _FUSED_OK


_FUSED_OK: bool | None = None


def _use_fused(x: Tensor) -> bool:
    if torch.compiler.is_compiling():  # inductor fuses the plain ops itself (and needs constant weights for these)
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad and _mkldnn_fused_ok()


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ W.T + b`` on the last axis: oneDNN's kernel on CPU float32 (bias in its epilogue; 10-40 % faster than
    ``F.linear``, which first copies the broadcast bias into the output), ``F.linear`` elsewhere."""
    if _use_fused(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _linear_add(x: Tensor, weight: Tensor, residual: Tensor) -> Tensor:
    """``residual + x @ W.T`` (2-D, no bias): oneDNN's linear with the sum fused on CPU float32 (20-35 % faster than
    ``addmm``, which first copies ``residual`` into its output), ``addmm`` elsewhere."""
    if _use_fused(x):
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")
    return torch.addmm(residual, x, weight.t())


def _linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """GELU(x @ W.T + b) on the last axis (one fused oneDNN kernel on CPU)."""
    if _use_fused(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return F.gelu(F.linear(x, weight, bias))


def _dw(x: Tensor, weight: Tensor, bias: Tensor, padding: int, gelu: bool = False) -> Tensor:
    """Depthwise conv (+ GELU) of an NHWC tensor, run on its channels-last NCHW view; NHWC out."""
    c = weight.shape[0]
    if _use_fused(x):
        y = torch.ops.mkldnn._convolution_pointwise(
            x.permute(0, 3, 1, 2),
            weight,
            bias,
            [padding] * 2,
            [1, 1],
            [1, 1],
            c,
            "gelu" if gelu else "none",
            [],
            "none" if gelu else "",
        )
    else:
        y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=padding, groups=c)
        if gelu:
            y = F.gelu(y)
    return y.permute(0, 2, 3, 1)


def _dw_dilated3(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """7x7 depthwise conv with dilation 3 and padding 9 of an NHWC tensor, as dense 7x7 convs on the 9 sub-grids.

    Output pixel (3i+p, 3j+q) only sees input pixels (3(i+k-3)+p, 3(j+l-3)+q): a plain 7x7 conv (padding 3) on the
    sub-grid of phase (p, q). Sub-grids shorter than the longest (H, W not multiples of 3) get a zero row / column,
    which the original padding treats as zeros, so the result is exact. Each phase is copied straight from ``x``
    and its result straight into the (B, H, W, C) output (no padded copy of the whole map).
    """
    b, h, w, c = x.shape
    hp, wp = -(-h // 3), -(-w // 3)
    phases = x.new_empty(3, 3, b, hp, wp, c)
    for p in range(3):
        for q in range(3):
            src = x[:, p::3, q::3]
            dst = phases[p, q]
            dst[:, : src.shape[1], : src.shape[2]].copy_(src)
            dst[:, src.shape[1] :].zero_()
            dst[:, : src.shape[1], src.shape[2] :].zero_()
    y = _dw(phases.view(9 * b, hp, wp, c), weight, bias, padding=3).reshape(3, 3, b, hp, wp, c)
    out = x.new_empty(b, h, w, c)
    for p in range(3):
        for q in range(3):
            dst = out[:, p::3, q::3]
            dst.copy_(y[p, q, :, : dst.shape[1], : dst.shape[2]])
    return out


class _FusedBlock(nn.Module):
    """One LSKNet block with BN and layer scales folded (NHWC in, NHWC out)."""

    def __init__(self, blk: nn.Module) -> None:
        super().__init__()
        attn, sgu, mlp = blk.attn, blk.attn.spatial_gating_unit, blk.mlp
        a1, c1 = _bn_affine(blk.norm1)
        a2, c2 = _bn_affine(blk.norm2)
        ls1, ls2 = blk.layer_scale_1, blk.layer_scale_2
        dim = a1.numel()
        w, b = _pointwise(attn.proj_1)  # proj_1(a1*x + c1) = (w*a1) x + (b + w c1)
        self.register_buffer("p1_w", w * a1[None, :])
        self.register_buffer("p1_b", b + w @ c1)
        self.register_buffer("c0_w", sgu.conv0.weight.clone())
        self.register_buffer("c0_b", sgu.conv0.bias.clone())
        self.register_buffer("cs_w", sgu.conv_spatial.weight.clone())
        self.register_buffer("cs_b", sgu.conv_spatial.bias.clone())
        half = dim // 2
        for name, conv in (("k1", sgu.conv1), ("k2", sgu.conv2)):
            w, b = _pointwise(conv)  # extra last row = this branch's share of the channel mean over C channels
            self.register_buffer(f"{name}_w", torch.cat([w, w.sum(0, keepdim=True) / dim]))
            self.register_buffer(f"{name}_b", torch.cat([b, b.sum().reshape(1) / dim]))
        self.half = half
        self.register_buffer("sq_w", sgu.conv_squeeze.weight.clone())
        self.register_buffer("sq_b", sgu.conv_squeeze.bias.clone())
        w, b = _pointwise(sgu.conv)
        self.register_buffer("cv_w", w.clone())
        self.register_buffer("cv_b", b.clone())
        # x + ls1*(proj_2(u) + a1*x + c1) = (1 + ls1*a1)*x + (ls1*W2) u + ls1*(b2 + c1)
        w, b = _pointwise(attn.proj_2)
        self.register_buffer("p2_w", ls1[:, None] * w)
        w2 = ls2[:, None] * mlp.fc2.weight.flatten(1)
        b2 = ls2 * mlp.fc2.bias
        # the MLP's output bias b2 is added here already (y = x' + b2), so the MLP ends in one bias-free GEMM that
        # accumulates into y; fc1 then sees y and compensates: fc1(x') = W1 y + (b1' - W1' b2)
        self.register_buffer("p2_b", ls1 * (b + c1) + b2)
        self.register_buffer("res_scale", 1.0 + ls1 * a1)
        w, b = _pointwise(mlp.fc1)
        self.register_buffer("f1_w", w * a2[None, :])
        self.register_buffer("f1_b", b + w @ c2 - (w * a2[None, :]) @ b2)
        self.register_buffer("dw_w", mlp.dwconv.dwconv.weight.clone())
        self.register_buffer("dw_b", mlp.dwconv.dwconv.bias.clone())
        self.register_buffer("f2_w", w2.contiguous())  # (dim, hidden)
        self.band_rows = 0  # 0: choose from the map size (see _mlp)

    def forward(self, x: Tensor) -> Tensor:
        u = _linear_gelu(x, self.p1_w, self.p1_b)
        small = _dw(u, self.c0_w, self.c0_b, padding=2)
        large = _dw_dilated3(small, self.cs_w, self.cs_b)
        s_ext = _linear(small, self.k1_w, self.k1_b)
        l_ext = _linear(large, self.k2_w, self.k2_b)
        half = self.half
        s, ls = s_ext[..., :half], l_ext[..., :half]
        mean = s_ext[..., half:] + l_ext[..., half:]
        mx = torch.maximum(s.amax(-1, keepdim=True), ls.amax(-1, keepdim=True))
        gate = torch.sigmoid(_conv_nhwc(torch.cat([mean, mx], -1), self.sq_w, self.sq_b, padding=3))
        selected = torch.mul(s, gate[..., 0:1]).addcmul_(ls, gate[..., 1:2])
        attn = _linear(selected, self.cv_w, self.cv_b)
        y = _linear(u.mul_(attn), self.p2_w, self.p2_b).addcmul_(x, self.res_scale)
        return self._mlp(y)

    def _mlp(self, y: Tensor) -> Tensor:
        """``y + fc2(GELU(dw3x3(fc1(y))))`` over bands of rows (+1 halo row each side), so the 4-8x wider hidden
        activations stay small (cache-resident, no page faults for huge temporaries). Exact: halo rows computed
        with the wrong (zero) padding are dropped; image borders keep the conv's zero padding."""
        b, h, w, c = y.shape
        hidden = self.f1_w.shape[0]
        rows = self.band_rows or max(8, (4 << 20) // (w * hidden * 4))
        if rows >= h:
            t = _dw(_linear(y, self.f1_w, self.f1_b), self.dw_w, self.dw_b, padding=1, gelu=True)
            return _linear_add(t.reshape(-1, hidden), self.f2_w, y.reshape(-1, c)).view(b, h, w, c)
        out = torch.empty_like(y)
        for i in range(b):
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                s0, s1 = max(0, r0 - 1), min(h, r1 + 1)
                t = _dw(_linear(y[i : i + 1, s0:s1], self.f1_w, self.f1_b), self.dw_w, self.dw_b, 1, gelu=True)
                t = t[:, r0 - s0 : r1 - s0].reshape(-1, hidden)
                out[i, r0:r1].view(-1, c).copy_(_linear_add(t, self.f2_w, y[i, r0:r1].reshape(-1, c)))
        return out


def _conv_nhwc(x: Tensor, weight: Tensor, bias: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1)


class _FusedStage(nn.Module):
    """Patch embedding (BN folded) + fused blocks + LayerNorm over channels (NHWC)."""

    def __init__(self, model: LSKNet, i: int) -> None:
        super().__init__()
        embed = getattr(model, f"patch_embed{i + 1}")
        a, c = _bn_affine(embed.norm)
        self.stride = embed.proj.stride[0]
        self.padding = embed.proj.padding[0]
        self.register_buffer("pe_w", embed.proj.weight * a[:, None, None, None])
        self.register_buffer("pe_b", embed.proj.bias * a + c)
        self.blocks = nn.ModuleList(_FusedBlock(b) for b in getattr(model, f"block{i + 1}"))
        norm = getattr(model, f"norm{i + 1}")
        self.register_buffer("ln_w", norm.weight.clone())
        self.register_buffer("ln_b", norm.bias.clone())
        self.eps = norm.eps

    def forward(self, x: Tensor) -> Tensor:
        x = _conv_nhwc(x, self.pe_w, self.pe_b, stride=self.stride, padding=self.padding)
        for blk in self.blocks:
            x = blk(x)
        return F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b, self.eps)


class InferenceLSKNet(nn.Module):
    """Folded, channels-last LSKNet (eval only). ``forward`` returns what the source model returned."""

    def __init__(self, model: LSKNet, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_FusedStage(model, i) for i in range(model.num_stages))
        self.out_indices = out_indices  # None: classifier semantics; tuple: list of stage maps
        self.global_pool = model.global_pool
        self.head = copy.deepcopy(model.head)
        self.num_classes = model.num_classes

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """All stage maps, NCHW (channels-last memory)."""
        x = x.permute(0, 2, 3, 1)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x.permute(0, 3, 1, 2))
        return feats

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        feats = self.forward_features(x.contiguous(memory_format=torch.channels_last))
        if self.out_indices is not None:
            return [feats[i] for i in self.out_indices]
        last = feats[-1]
        if self.global_pool == "avg":
            last = last.mean(dim=(2, 3))
        return self.head(last)


class _CompiledWithFallback(nn.Module):
    """``torch.compile`` of the optimized model; falls back to it (once, with a warning) if compiling fails."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.failed = False

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return self.module.forward_features(x)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if not self.failed:
            try:
                return self.compiled(x)
            except Exception as err:  # toolchain-dependent (no C++ compiler, unsupported op, ...)
                self.failed = True
                _log.warning(
                    "torch.compile failed (%s: %s); using the uncompiled optimized model",
                    type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "",
                )
        return self.module(x)


def optimize_for_inference(model: nn.Module, *, compile: bool = False) -> nn.Module:
    """Return an inference-optimized copy of an LSKNet classifier/backbone, a timm ``features_only`` LSKNet, a
    detector (Oriented R-CNN, RoI Transformer, S2A-Net, R3Det) or a segmenter, with the same call signature and the
    same outputs up to float rounding.

    Detectors and segmenters: see :mod:`lsknet.inference.optimize_models` (fused backbone inside, channels-last
    neck/heads with fused conv+activation; ``compile`` is not applied to them). ``model`` is left untouched.
    """
    from lsknet.models.detector_base import Detector
    from lsknet.models.segmentation import Segmenter

    if isinstance(model, (Detector, Segmenter)):
        from lsknet.inference.optimize_models import optimize_detector, optimize_segmenter

        if compile:
            _log.warning("optimize_for_inference: compile=True is ignored for %s", type(model).__name__)
        return optimize_detector(model) if isinstance(model, Detector) else optimize_segmenter(model)
    return optimize_for_backbone(model, compile=compile)


def optimize_for_backbone(model: nn.Module, *, compile: bool = False) -> nn.Module:
    """Return an inference-optimized copy of an LSKNet classifier/backbone or timm ``features_only`` LSKNet.

    The copy is in eval mode, uses the current weights (BatchNorm running statistics), computes the same function
    up to float rounding (~1e-6 relative) and leaves ``model`` untouched. ``compile=True`` wraps it in
    ``torch.compile`` (falls back to the uncompiled module, with a warning, if compilation fails). LSK ablation
    variants (``lsk_*`` kwargs) are not fused: they come back as an eager eval-mode copy, with a warning.
    """
    inner = getattr(model, "model", None)
    if isinstance(model, LSKNet):
        source, out_indices = model, None
    elif isinstance(inner, LSKNet):
        source, out_indices = inner, tuple(model.out_indices)
    else:
        raise TypeError(f"optimize_for_inference expects an LSKNet (or a timm features_only LSKNet), got {type(model)}")
    if not getattr(source, "lsk_is_official", True):
        _log.warning(
            "optimize_for_inference: LSK ablation variant %s has no fused kernels; returning an eager eval copy",
            source.lsk_config,
        )
        eager = copy.deepcopy(model).eval()
        for p in eager.parameters():
            p.requires_grad_(False)
        return eager
    with torch.no_grad():
        fused = InferenceLSKNet(source, out_indices).eval()
    for p in fused.parameters():
        p.requires_grad_(False)
    param = next(source.parameters())
    fused = fused.to(param.device)
    if compile:
        return _CompiledWithFallback(fused)
    return fused


def count_flops(model: nn.Module, x: Tensor) -> int:
    """Floating-point operations of one forward pass on ``x`` (conv / matmul only, 1 multiply-add = 2 FLOPs),
    counted with ``torch.utils.flop_counter.FlopCounterMode``. Divide by 2 for MACs (what papers call "FLOPs")."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def benchmark(
    name: str = "lsknet_t",
    size: int = 1024,
    batch: int = 1,
    *,
    repeats: int = 5,
    warmup: int = 1,
    compile: bool = False,
    checkpoint: str | None = None,
    num_classes: int = 1000,
    seed: int = 0,
) -> dict:
    """Time the eager model against :func:`optimize_for_inference` in the same process, interleaved.

    Input: ``batch`` random images of ``size`` x ``size``. Returns params (as built, and without the head), GMACs and
    GFLOPs (= 2 x GMACs), median wall-clock latencies in ms (``eager_ms``, ``optimized_ms``), their ratio
    ``speedup`` (also the median of per-repeat ratios, robust to load from other processes), the same for process
    CPU time, and ``max_rel_diff`` = max |optimized - eager| / max |eager| over the outputs.
    """
    import statistics
    import time

    import timm

    from lsknet.models.checkpoint import load_backbone_weights

    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes).eval()
    if checkpoint:
        load_backbone_weights(model, checkpoint)
    params = sum(p.numel() for p in model.parameters())
    params_backbone = params - sum(p.numel() for p in model.get_classifier().parameters())
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    flops = count_flops(model, x)
    t0 = time.perf_counter()
    fast = optimize_for_inference(model, compile=compile)
    with torch.inference_mode():
        ref = model(x)
        out = fast(x)  # compiles here when compile=True
        prepare_s = time.perf_counter() - t0
        max_rel = ((out - ref).abs().max() / ref.abs().max()).item()
        for _ in range(max(0, warmup - 1)):
            model(x)
            fast(x)
        rows = []
        for _ in range(repeats):
            row = []
            for net in (model, fast):
                w, c = time.perf_counter(), time.process_time()
                net(x)
                row += [time.perf_counter() - w, time.process_time() - c]
            rows.append(row)
    eager_wall, eager_cpu, fast_wall, fast_cpu = (statistics.median(col) * 1000 for col in zip(*rows))
    return {
        "model": name,
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "compile": compile,
        "params": params,
        "params_backbone": params_backbone,
        "gmacs": flops / 2e9,
        "gflops": flops / 1e9,
        "eager_ms": eager_wall,
        "optimized_ms": fast_wall,
        "speedup": eager_wall / fast_wall,
        "speedup_median_of_ratios": statistics.median(r[0] / r[2] for r in rows),
        "eager_cpu_ms": eager_cpu,
        "optimized_cpu_ms": fast_cpu,
        "cpu_speedup": eager_cpu / fast_cpu,
        "max_rel_diff": max_rel,
        "prepare_s": prepare_s,
        "repeats": repeats,
        "eager_runs_ms": [r[0] * 1000 for r in rows],
        "optimized_runs_ms": [r[2] * 1000 for r in rows],
    }
