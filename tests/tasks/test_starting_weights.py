"""One lifecycle for starting weights (TaskModule.setup): every task reads model.checkpoint / backbone_checkpoint
when fitting starts, never when a module is rebuilt, and not when a run resumes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch

import lsknet.models.backbone  # noqa: F401  (registers lsknet_t)
from lsknet.errors import CheckpointError
from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.tasks.classification import SceneClassifier
from lsknet.tasks.detection import OrientedDetector

KEY = "patch_embed1.proj.weight"


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    torch.manual_seed(3)
    model = timm.create_model("lsknet_t")
    path = tmp_path_factory.mktemp("w") / "lsk_t_backbone.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model.state_dict()[KEY]


def _classifier(path):
    return SceneClassifier({"task": "classify", "model": {"name": "lsknet_t", "checkpoint": str(path)},
                            "data": {"classes": ["a", "b"]}})  # fmt: skip


def _detector(**model):
    return OrientedDetector({"task": "detect", "model": {"name": "lsknet_t", **model}, "data": {"classes": ["a"]}})


def test_classifier_loads_at_fit_only(backbone_file, tmp_path):
    path, weight = backbone_file
    module = _classifier(path)
    assert not torch.equal(module.model.state_dict()[KEY], weight)  # building reads no file
    module.setup("validate")
    assert not torch.equal(module.model.state_dict()[KEY], weight)
    module.setup("fit")
    assert torch.equal(module.model.state_dict()[KEY], weight)
    assert _classifier(tmp_path / "gone.pth") is not None  # rebuilding without the file works
    with pytest.raises(CheckpointError, match="not found"):
        _classifier(tmp_path / "gone.pth").setup("fit")


def test_detector_backbone_then_whole_detector(backbone_file, tmp_path):
    path, weight = backbone_file
    module = _detector(backbone_checkpoint=str(path))
    assert not torch.equal(module.model.backbone.state_dict()[KEY], weight)
    module.setup("fit")
    assert torch.equal(module.model.backbone.state_dict()[KEY], weight)
    torch.manual_seed(5)
    whole = build_oriented_rcnn("lsknet_t", num_classes=1)
    det_path = tmp_path / "det.pth"
    torch.save({"state_dict": whole.state_dict()}, det_path)
    module = _detector(backbone_checkpoint=str(path), checkpoint=str(det_path))
    module.setup("fit")  # the whole detector wins over the backbone file
    key = "roi_head.bbox_head.fc_cls.weight"
    assert torch.equal(module.model.state_dict()[key], whole.state_dict()[key])
    assert torch.equal(module.model.backbone.state_dict()[KEY], whole.backbone.state_dict()[KEY])


def test_resuming_does_not_read_the_starting_weights(tmp_path):
    module = _classifier(tmp_path / "gone.pth")
    module._trainer = SimpleNamespace(ckpt_path=str(tmp_path / "last.ckpt"))
    module.setup("fit")  # no error: the resumed checkpoint holds the weights
