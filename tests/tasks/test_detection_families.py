"""Every detector family of the official model zoo (RoI Transformer, S2A-Net, R3Det) through the same task paths as
Oriented R-CNN: preset -> training with DOTA-mAP validation -> checkpoint -> Predictor / prediction files, and an
MMRotate-layout file of each family through ``Predictor.from_checkpoint`` (family read from its module names)."""

from __future__ import annotations

import pytest
import torch

from lsknet.config import apply_overrides, load_config
from lsknet.data.dota import read_task1_dir
from lsknet.data.synthetic import generate_dota_scenes
from lsknet.inference.predictor import Predictor
from lsknet.models.detectors import build_detector
from lsknet.tasks import detection, runner
from tests.inference.test_optimize_models import _assert_same_detections

CLASSES = ["plane", "ship", "storage-tank"]
# small heads for speed on 128 px images (the official sizes are in the presets)
SMALL_HEADS = {
    "roitrans": "{rpn_train_proposals: {nms_pre: 200, max_per_img: 64}, rpn_test_proposals: {max_per_img: 64}, "
    "train_cfg: {num_samples: 32}}",
    "s2anet": "{}",
    "r3det": "{}",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    kw = dict(size=128, classes=CLASSES, objects_per_image=(1, 3), dense_probability=0.0, difficult_fraction=0.0)
    generate_dota_scenes(root / "train", num_images=2, seed=3, **kw)
    generate_dota_scenes(root / "val", num_images=1, seed=4, **kw)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["roitrans", "s2anet", "r3det"])
def test_family_trains_validates_and_predicts_from_its_checkpoint(kind, tiny_data, tmp_path):
    cfg = apply_overrides(
        load_config(f"dota_lsknet_t_{kind}"),
        [
            f"data.train_root={tiny_data / 'train'}",
            f"data.val_root={tiny_data / 'val'}",
            f"data.classes={CLASSES}",
            "data.image_size=128",
            "data.batch_size=1",
            "data.num_workers=0",
            "data.augment.rotate_p=0.0",
            f"run_dir={tmp_path / 'run'}",
            "model.drop_path_rate=0.0",
            "model.proj_drop_rate=0.0",
            f"model.head={SMALL_HEADS[kind]}",
            "trainer.max_steps=2",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.enable_progress_bar=false",
            "trainer.tensorboard=false",
            "trainer.log_every_n_steps=1",
            "optim.warmup_iters=1",
        ],
    )
    result = runner.train(cfg)
    metrics = result.metrics["metrics"]
    assert 0.0 <= metrics["val/mAP"] <= 1.0 and result.metrics["global_step"] == 2
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("train/loss"))
    predictor = Predictor.from_checkpoint(result.best_checkpoint, overlap=32)
    assert type(predictor.model).__name__ == type(build_detector(f"lsknet_t_{kind}", num_classes=3)).__name__
    module, _, _ = runner.load_module(result.best_checkpoint, build_data=False)
    out = tmp_path / "pred"
    summary = detection.predict(module, [tiny_data / "val" / "images"], out, overlap=32, progress=False)
    assert summary["num_images"] == 1
    read_task1_dir(out / "task1", CLASSES)


@pytest.mark.parametrize("kind", ["roitrans", "s2anet", "r3det"])
def test_mmrotate_file_of_each_family_predicts(kind, tmp_path):
    model = build_detector(f"lsknet_t_{kind}", num_classes=3)
    path = tmp_path / f"{kind}.pth"
    torch.save({"meta": {"CLASSES": CLASSES}, "state_dict": model.state_dict()}, path)
    predictor = Predictor.from_checkpoint(path, tile_size=96, overlap=16, optimize=False)
    assert type(predictor.model) is type(model) and predictor.classes == tuple(CLASSES)
    for key, value in model.state_dict().items():  # the weights of the file, not a fresh model's
        assert torch.equal(predictor.model.state_dict()[key], value), key
    image = torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)
    (res,) = predictor.predict([image], progress=False)
    assert res.rboxes.shape[1] == 5 and len(res.rboxes) == len(res.scores) == len(res.labels)


@pytest.mark.parametrize(("kind", "score_atol"), [("roitrans", 1e-5), ("s2anet", 1e-5), ("r3det", 5e-5)])
def test_optimized_family_gives_the_eager_detections(kind, score_atol):
    """Same detections; R3Det's score tolerance is wider because its two refine stages (4 convs each on sampled
    features) amplify float32 rounding: 5e-7 relative noise on the eager model's own backbone features (below its
    float32 error against float64, ~6e-7) moves its scores by up to 7.5e-6 on this image (measured, 5 seeds), and
    the optimized model rounds differently all the way through (oneDNN GEMMs, channels-last convs). Detections
    whose scores tie within the tolerance may swap places (``_assert_same_detections``)."""
    from lsknet import optimize_for_inference

    torch.manual_seed(0)
    model = build_detector(f"lsknet_t_{kind}", num_classes=3, head={"test_cfg": {"score_thr": 0.05}}).eval()
    with torch.no_grad():  # a realistic spread of class scores instead of the initial prior
        for name, param in model.named_parameters():
            if "cls" in name and not name.startswith("backbone"):
                param.normal_(0.0, 0.05 if param.ndim > 1 else 1.0)
    fast = optimize_for_inference(model)
    image = torch.randint(0, 255, (3, 97, 131), dtype=torch.uint8)
    with torch.inference_mode():
        (want,) = model([image])
        (got,) = fast([image])
    _assert_same_detections(want, got, score_atol=score_atol, min_count=5)
