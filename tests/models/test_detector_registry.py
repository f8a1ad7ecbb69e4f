"""The detector families by name, config and checkpoint keys, and the shared ``Detector`` base contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lsknet
from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.detector_base import Detector, load_detector_checkpoint
from lsknet.models.detectors import detector_from_config, detector_kind_of_state_dict, split_detector_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lsknet_t", ("lsknet_t", "orcnn")),
        ("lsknet_t_orcnn", ("lsknet_t", "orcnn")),
        ("lsknet_s_roitrans", ("lsknet_s", "roitrans")),
        ("lsknet_t_s2anet", ("lsknet_t", "s2anet")),
        ("lsknet_s_r3det", ("lsknet_s", "r3det")),
        ("resnet18", ("resnet18", "orcnn")),
    ],
)
def test_split_detector_name(name, expected):
    assert split_detector_name(name) == expected


@pytest.mark.parametrize(
    ("keys", "kind"),
    [
        (["backbone.patch_embed1.proj.weight", "rpn_head.rpn_conv.weight", "roi_head.bbox_head.fc_cls.weight"],
         "orcnn"),
        (["rpn_head.rpn_conv.weight", "roi_head.bbox_head.0.fc_cls.weight", "roi_head.bbox_head.1.fc_reg.weight"],
         "roitrans"),
        (["fam_head.retina_cls.weight", "align_conv.ac.0.deform_conv.weight", "odm_head.odm_cls.weight"], "s2anet"),
        (["bbox_head.retina_cls.weight", "feat_refine_module.0.conv_5_1.weight", "refine_head.0.retina_cls.weight"],
         "r3det"),
        (["backbone.patch_embed1.proj.weight", "head.weight"], None),
    ],
)
def test_kind_from_official_key_names(keys, kind):
    assert detector_kind_of_state_dict(dict.fromkeys(keys)) == kind


def test_config_keys_of_another_family_are_refused():
    with pytest.raises(ConfigError, match=r"\['rpn'\] do not apply to 'lsknet_t_s2anet'"):
        detector_from_config({"name": "lsknet_t_s2anet", "rpn": {"nms_pre": 10}}, 3)
    with pytest.raises(ConfigError, match=r"\['head'\] do not apply to 'lsknet_t'"):
        detector_from_config({"name": "lsknet_t", "head": {"x": 1}}, 3)
    # the defaults every preset inherits from detect.yaml ({} / null) do not count
    model = detector_from_config({"name": "lsknet_t_r3det", "rpn": {}, "roi": None, "head": {}}, 3)
    assert type(model).__name__ == "R3Det"
    with pytest.raises(ConfigError, match="unknown model key"):
        detector_from_config({"name": "lsknet_t", "heads": {}}, 3)


def test_oriented_rcnn_through_every_entry_point_is_the_same_model():
    a = lsknet.create_model("lsknet_t_orcnn", num_classes=3)
    b = detector_from_config({"name": "lsknet_t"}, 3)
    c = lsknet.build_detector("lsknet_t_orcnn", num_classes=3)
    assert isinstance(a, Detector)
    assert list(a.state_dict()) == list(b.state_dict()) == list(c.state_dict())


class _BoxPerImage(Detector):
    """A stand-in detector: one box per image at the image centre, size = mean normalised intensity + 10."""

    def __init__(self) -> None:
        super().__init__(nn.Identity(), nn.Identity())
        self.score = nn.Linear(1, 1)

    @property
    def num_classes(self) -> int:
        return 2

    def loss_batch(self, batch, sizes, gt_rboxes, gt_labels):
        return {"loss_box": sum(((b[:, :2] - torch.tensor(s[::-1]) / 2) ** 2).sum() for b, s in zip(gt_rboxes, sizes))
                + self.score.weight.sum() * 0}

    def predict_batch(self, batch, sizes, scale_factors=None):
        out = []
        for i, (h, w) in enumerate(sizes):
            sx, sy = scale_factors[i] if scale_factors is not None else (1.0, 1.0)
            box = torch.tensor([[w / 2 / sx, h / 2 / sy, 10.0 / sx, 10.0 / sy, 0.0]])
            out.append({"rboxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long),
                        "padded": torch.tensor(batch.shape[-2:])})
        return out


def test_detector_base_contract():
    model = _BoxPerImage()
    images = [torch.zeros(3, 40, 70), torch.full((3, 100, 30), 255.0)]
    losses = model(images, [{"rboxes": torch.tensor([[35.0, 20.0, 5, 5, 0]]), "labels": torch.tensor([1])},
                            {"rboxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}])
    assert float(losses["loss_box"].detach()) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        model(images[:1], [{"rboxes": torch.zeros(1, 5), "labels": torch.tensor([2])}])
    model.eval()
    res = model(images)  # each image padded on its own to a multiple of 32
    assert res[0]["padded"].tolist() == [64, 96] and res[1]["padded"].tolist() == [128, 32]
    assert res[0]["rboxes"][0, :2].tolist() == [35.0, 20.0]
    model.test_resize = 200  # keep-ratio rescale, boxes mapped back to the input pixels
    res = model([torch.zeros(3, 40, 70)])
    assert res[0]["rboxes"][0].tolist() == pytest.approx([35.0, 20.0, 10.0 * 70 / 200, 10.0 * 40 / 114, 0.0], rel=1e-6)


def test_class_count_mismatch_is_named(tmp_path):
    small = lsknet.create_model("lsknet_t_orcnn", num_classes=3)
    path = tmp_path / "det.pth"
    torch.save({"state_dict": small.state_dict()}, path)
    with pytest.raises(CheckpointError, match="trained for 3 classes but the model has 15"):
        load_detector_checkpoint(lsknet.create_model("lsknet_t_orcnn", num_classes=15), path)


def test_onnx_export_of_another_detector_family_is_a_clear_error(tmp_path):
    pytest.importorskip("onnx")
    from lsknet.errors import LSKNetError
    from lsknet.export import to_onnx

    with pytest.raises(LSKNetError, match="ONNX export of _BoxPerImage is not available"):
        to_onnx(_BoxPerImage(), tmp_path / "x.onnx", input_size=(1, 3, 64, 64))


def test_demo_model_section_swaps_the_head_keys():
    from lsknet.config import load_config
    from lsknet.tasks.detection_demo import demo_model_section

    cfg = load_config("demo_detect")
    orcnn = demo_model_section(cfg, "lsknet_t_orcnn")
    assert orcnn["rpn"] == cfg["model"]["rpn"] and "head" not in orcnn
    other = demo_model_section(cfg, "lsknet_s_r3det")
    assert other["name"] == "lsknet_s_r3det" and "rpn" not in other and "roi" not in other
    assert other["drop_path_rate"] == cfg["model"]["drop_path_rate"]
    roitrans = demo_model_section(cfg, "lsknet_t_roitrans")
    assert roitrans["head"]["rpn_test_proposals"] == cfg["demo"]["heads"]["roitrans"]["rpn_test_proposals"]
    assert detector_from_config(roitrans, 4).roi_head.train_cfg[0].num_samples == 128
    with pytest.raises(ConfigError, match="expected lsknet_"):
        demo_model_section(cfg, "resnet18_r3det")
