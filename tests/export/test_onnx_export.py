"""ONNX export: exported backbone / classifier / segmenter equal PyTorch at two input sizes and two batch sizes;
the export-friendly detector steps equal the eager ones; the exported Oriented R-CNN gives the eager detector's
detections (slow: tracing the whole detector takes ~20 s); bad input is refused with clear errors."""

from __future__ import annotations

import builtins

import pytest
import timm
import torch

import lsknet.models.backbone  # noqa: F401  (registers the LSKNet timm models)
from lsknet.errors import CheckpointError
from lsknet.export import ExportError, MissingExtraError, read_metadata, to_onnx
from lsknet.export.detector import DetectorGraph
from lsknet.export.graph_ops import nms_rotated_graph, roi_align_rotated_graph
from lsknet.inference.onnx_runtime import OnnxDetector, load_onnx
from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.models.segmentation import build_segmenter
from lsknet.ops import nms_rotated, roi_align_rotated

pytest.importorskip("onnxruntime")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _check_equal(model, runtime, shapes):
    for shape in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            ref = model(x)
        got = runtime(x)
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        gots = list(got) if isinstance(got, (list, tuple)) else [got]
        assert len(gots) == len(refs)
        for g, r in zip(gots, refs):
            assert g.shape == r.shape, (shape, g.shape, r.shape)
            assert _rel(g, r) < 1e-4, (shape, _rel(g, r))


SHAPES = [(1, 3, 64, 64), (2, 3, 96, 64)]  # two batch sizes, two input sizes (not the export size 64x96 either)


def test_backbone_features_only_one_output_per_map(tmp_path):
    model = timm.create_model("lsknet_t", features_only=True).eval()
    path = to_onnx(model, tmp_path / "bb.onnx", input_size=(1, 3, 64, 96))
    runtime = load_onnx(path)
    assert runtime.kind == "backbone"
    assert [i.name for i in runtime.session.get_outputs()] == [f"feat{i}" for i in range(4)]
    _check_equal(model, runtime, SHAPES)


def test_classifier_and_static_export(tmp_path):
    model = timm.create_model("lsknet_t", num_classes=7).eval()
    path = to_onnx(model, tmp_path / "cls.onnx", input_size=(1, 3, 64, 64), metadata={"classes": list("abcdefg")})
    runtime = load_onnx(path)
    assert runtime.kind == "classifier" and runtime.classes == tuple("abcdefg")
    _check_equal(model, runtime, SHAPES)
    # int8 dynamic quantization: a quarter of the size, the metadata says so, logits stay close
    from lsknet.export.quantize import quantize_int8

    quantized = load_onnx(quantize_int8(path, tmp_path / "cls.int8.onnx"))
    assert quantized.meta["quantized"] == "int8-dynamic" and quantized.classes == tuple("abcdefg")
    assert (tmp_path / "cls.int8.onnx").stat().st_size < 0.4 * path.stat().st_size
    x = torch.randn(2, 3, 64, 64)
    assert _rel(quantized(x), runtime(x)) < 0.2
    static = load_onnx(to_onnx(model, tmp_path / "static.onnx", input_size=(2, 3, 64, 64), dynamic=False))
    assert [d for d in static.session.get_inputs()[0].shape] == [2, 3, 64, 64]
    _check_equal(model, static, [(2, 3, 64, 64)])


def test_segmenter(tmp_path):
    model = build_segmenter("lsknet_t", "unetformer", num_classes=4, aux_head=False).eval()
    runtime = load_onnx(to_onnx(model, tmp_path / "seg.onnx", input_size=(1, 3, 64, 64)))
    assert runtime.kind == "segmenter"
    _check_equal(model, runtime, SHAPES)


def test_graph_nms_equals_eager_nms():
    gen = torch.Generator().manual_seed(0)
    for n in (0, 1, 40, 300):
        xy = torch.rand(n, 2, generator=gen) * 120
        wh = torch.rand(n, 2, generator=gen) * 40 + 2
        theta = (torch.rand(n, 1, generator=gen) - 0.5) * 3.1
        boxes = torch.cat([xy, wh, theta], 1)
        boxes[n // 2 :, :] = boxes[: n - n // 2].flip(0) + 0.5 if n > 1 else boxes[n // 2 :]  # near duplicates
        scores = torch.rand(n, generator=gen)
        labels = torch.randint(0, 3, (n,), generator=gen)
        for thr in (0.1, 0.5):
            expected = nms_rotated(boxes, scores, thr, labels=labels, max_dets=50)
            assert torch.equal(nms_rotated_graph(boxes, scores, labels, thr, 50), expected)


def test_graph_roi_align_equals_eager():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 8, 20, 24, generator=gen)
    rois = torch.cat(
        [torch.zeros(30, 1), torch.rand(30, 2, generator=gen) * 90, torch.rand(30, 2, generator=gen) * 60,
         torch.rand(30, 1, generator=gen) * 6 - 3],  # fmt: skip
        1,
    )
    expected = roi_align_rotated(feats, rois, 7, 0.25, 2, aligned=True, clockwise=True)
    got = roi_align_rotated_graph(feats, rois, (7, 7), 0.25, 2, aligned=True, clockwise=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _tiny_detector(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_oriented_rcnn(
        "lsknet_t",
        num_classes=3,
        fpn_channels=32,
        rpn={"test_proposals": {"nms_pre": 300, "max_per_img": 64}},
        roi={"fc_channels": 64, **kw},
    ).eval()
    with torch.no_grad():  # spread the untrained scores so that the test sees many distinct detections
        model.rpn_head.rpn_cls.weight.normal_(0, 0.3)
        model.roi_head.bbox_head.fc_cls.weight.normal_(0, 0.3)
        model.roi_head.bbox_head.fc_reg.weight.normal_(0, 0.05)
    return model


def _images():
    gen = torch.Generator().manual_seed(5)
    scene = torch.full((3, 150, 170), 90.0)
    for _ in range(6):  # bright rectangles on a dark ground
        y, x = (int(v) for v in torch.randint(0, 120, (2,), generator=gen))
        scene[:, y : y + 25, x : x + 40] = 230.0
    return {
        "scene": scene,
        "noise": torch.rand(3, 96, 128, generator=gen) * 255,
        "blank": torch.full((3, 64, 64), 128.0),  # no objects
        "large": torch.rand(3, 200, 260, generator=gen) * 255,  # larger than the export size
    }


def _same_detections(got: dict, ref: dict) -> None:
    assert got["scores"].shape == ref["scores"].shape
    assert torch.equal(got["labels"], ref["labels"])
    torch.testing.assert_close(got["rboxes"], ref["rboxes"], rtol=0, atol=1e-2)
    torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-4)


def test_detector_graph_runs_the_eager_test_path():
    """The export-friendly formulation, run eagerly, gives the eager detector's detections."""
    model = _tiny_detector()
    graph = DetectorGraph(model)
    for name, img in _images().items():
        with torch.no_grad():
            ref = model([img])[0]
            rboxes, scores, labels = graph(img[None])
        assert ref["scores"].numel() > 0 or name == "blank"
        _same_detections({"rboxes": rboxes, "scores": scores, "labels": labels}, ref)


@pytest.mark.slow
def test_exported_detector_equals_eager(tmp_path):
    model = _tiny_detector()
    path = to_onnx(model, tmp_path / "det.onnx", input_size=(1, 3, 128, 128), metadata={"classes": ["a", "b", "c"]})
    runtime = load_onnx(path)
    assert isinstance(runtime, OnnxDetector) and runtime.num_classes == 3 and runtime.classes == ("a", "b", "c")
    meta = read_metadata(path)
    assert meta["preprocessing"]["pixel_mean"] == pytest.approx([123.675, 116.28, 103.53])
    counts = []
    for img in _images().values():
        with torch.no_grad():
            ref = model([img])[0]
        got = runtime([img])[0]
        _same_detections(got, ref)
        counts.append(len(ref["scores"]))
    assert max(counts) > 10
    # no detection at all: the empty path through the graph
    model.roi_head.test_cfg.score_thr = 0.999
    empty = load_onnx(to_onnx(model, tmp_path / "none.onnx", input_size=(1, 3, 64, 64)))([_images()["scene"]])[0]
    assert empty["rboxes"].shape == (0, 5) and empty["labels"].dtype == torch.int64


def test_detector_with_a_test_resize_is_refused(tmp_path):
    model = _tiny_detector()
    model.test_resize = 800
    with pytest.raises(ExportError, match="test_resize"):
        to_onnx(model, tmp_path / "det.onnx", input_size=(1, 3, 64, 64))


def test_bad_files_and_missing_onnxruntime(tmp_path, monkeypatch):
    import onnx

    plain = tmp_path / "plain.onnx"
    model = torch.nn.Conv2d(3, 4, 3)
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(CheckpointError, match="not an lsknet export"):
        load_onnx(plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.onnx"):
        load_onnx(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")
    assert onnx  # the real module stays importable for the other tests
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    good = to_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "good.onnx", input_size=(1, 3, 8, 8))
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    with pytest.raises(MissingExtraError, match=r"lsknet\[export\]"):
        load_onnx(good)
