"""Detection presets = the official LSKNet configs: stated sources and deviations, batch/lr per model, HRSC and EMA
recipes, weight decay on every parameter, SyncBN under DDP, and the ExpMomentumEMA rule against mmdet's formula."""

from __future__ import annotations

import math
from importlib import resources

import lightning as L
import pytest
import torch
from torch import nn

from lsknet.config import list_presets, load_config
from lsknet.tasks import detection, runner
from lsknet.tasks.ema import EMACallback
from lsknet.tasks.optim import build_optimizer

DETECTION_PRESETS = sorted(n for n in list_presets() if n.endswith("_orcnn"))


def _preset_text(name: str) -> str:
    return (resources.files("lsknet") / "configs" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", DETECTION_PRESETS)
def test_every_detection_preset_states_its_source_and_deviations(name):
    text = _preset_text(name)
    assert "# Source:" in text and "Deviations" in text
    assert "lsk_" in text  # names the official config file it follows


def test_official_batch_and_lr_per_model():
    t, s = load_config("dota_lsknet_t_orcnn"), load_config("dota_lsknet_s_orcnn")
    assert (t["data"]["batch_size"], t["optim"]["lr"]) == (2, 2e-4)  # lsk_t_fpn_1x_dota_le90.py
    assert (s["data"]["batch_size"], s["optim"]["lr"]) == (1, 1e-4)  # lsk_s_fpn_1x_dota_le90.py
    for cfg in (t, s):
        assert cfg["optim"]["weight_decay"] == 0.05 and cfg["optim"]["no_decay_norm_bias"] is False
        assert cfg["trainer"]["sync_batchnorm"] is True and cfg["data"]["keep_ratio"] is True
        assert cfg["data"]["augment"]["rect_classes"] == ["storage-tank", "roundabout"]
        assert cfg["data"]["augment"]["rotate_p"] == 0.5 and cfg["data"]["augment"]["min_size"] == 5


def test_hrsc_recipe():
    cfg = load_config("hrsc_lsknet_s_orcnn")  # lsk_s_fpn_3x_hrsc_le90.py
    assert cfg["optim"]["lr"] == 4e-4 and cfg["optim"]["milestones"] == [24, 33]
    assert cfg["trainer"]["max_epochs"] == 36 and cfg["data"]["batch_size"] == 2
    assert cfg["data"]["image_size"] == 800 and cfg["data"]["keep_ratio"] is True
    assert cfg["data"]["augment"]["rotate_p"] == 0.5 and cfg["data"]["augment"]["rect_classes"] == []


def test_ema_preset_is_the_official_s_star_run():
    cfg = load_config("dota_lsknet_s_ema_orcnn")  # lsk_s_ema_fpn_1x_dota_le90.py
    assert cfg["data"]["batch_size"] == 1 and cfg["optim"]["lr"] == 2e-4
    ema = EMACallback.from_config(cfg["ema"])
    assert ema.warmup == "exp" and ema.total_iter == 8541 * 12 and ema.decay == pytest.approx(1 - 2e-4)


def test_dior_preset_says_it_has_no_official_config():
    for name in ("dior_lsknet_s_orcnn", "dior_lsknet_t_orcnn"):
        text = _preset_text(name)
        assert "NO official LSKNet config" in text and "_fpn_1x_dota_le90.py" in text


def test_weight_decay_on_every_parameter():
    cfg = load_config("dota_lsknet_s_orcnn")
    module, _ = detection.build(cfg)
    optimizer = build_optimizer(module.model, cfg["optim"])
    params = [p for p in module.model.parameters() if p.requires_grad]
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.05
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in params}
    assert any(p.ndim == 1 for p in params)  # norms and biases are decayed too


def _bn_counts(model: nn.Module) -> tuple[int, int]:
    sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    plain = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                for m in model.modules())  # fmt: skip
    return plain, sync


def test_syncbn_when_ddp(tmp_path, monkeypatch):
    cfg = load_config("dota_lsknet_t_orcnn")
    module, _ = detection.build(cfg)
    plain, _ = _bn_counts(module.model)
    assert plain > 0  # the LSKNet backbone normalises with BatchNorm
    cfg["trainer"].update(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False, tensorboard=False)
    # on CPU (gloo) SyncBatchNorm cannot run: the setting is dropped
    assert runner.build_trainer(cfg, tmp_path, training=False).strategy._layer_sync is None
    assert runner.sync_batchnorm_possible({"accelerator": "gpu"})
    assert not runner.sync_batchnorm_possible({"accelerator": "cpu"})
    # with GPUs (simulated: the Trainer is only built, not run) the DDP strategy gets the SyncBN layer sync ...
    monkeypatch.setattr(runner, "sync_batchnorm_possible", lambda kwargs: True)
    layer_sync = runner.build_trainer(cfg, tmp_path, training=False).strategy._layer_sync
    assert layer_sync is not None
    converted = layer_sync.apply(module)  # ... which DDPStrategy.setup applies to the module
    assert _bn_counts(converted.model) == (0, plain)
    cfg["trainer"].update(devices=1, strategy="auto")  # one device: nothing to synchronise
    assert getattr(runner.build_trainer(cfg, tmp_path, training=False).strategy, "_layer_sync", None) is None


class _Scalar(L.LightningModule):
    """One parameter w, loss = w * g_k with a different gradient each step; plain SGD (lr 1)."""

    GRADS = (1.0, -2.0, 0.5, 3.0, -1.0, 2.0)

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([4.0]))
        self.after_step: list[float] = []

    def training_step(self, batch, batch_idx):
        return self.w.sum() * self.GRADS[batch_idx]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.after_step.append(float(self.w.detach()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _official_exp_momentum_ema(initial: float, weights: list[float], momentum: float, total_iter: int) -> float:
    """mmdet 2.x ExpMomentumEMAHook, re-derived: the buffer starts as the weights at before_run; after_train_iter at
    runner.iter = k: m_k = (1 - momentum) * exp(-(1 + k) / total_iter) + momentum;
    buffer = buffer * (1 - m_k) + weights * m_k."""
    buffer = initial
    for k, w in enumerate(weights):
        m_k = (1 - momentum) * math.exp(-(1 + k) / total_iter) + momentum
        buffer = buffer * (1 - m_k) + w * m_k
    return buffer


def _trainer(callback, root) -> L.Trainer:
    return L.Trainer(max_epochs=1, accelerator="cpu", callbacks=[callback], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)  # fmt: skip


def test_exp_momentum_ema_follows_mmdet_formula(tmp_path):
    momentum, total_iter = 0.2, 3  # large values so that every step's momentum matters
    ema = EMACallback(decay=1 - momentum, warmup="exp", total_iter=total_iter)
    loader = torch.utils.data.DataLoader(torch.zeros(len(_Scalar.GRADS), 1), batch_size=1)
    module = _Scalar()
    _trainer(ema, tmp_path).fit(module, loader)
    weights = module.after_step
    assert weights == [3.0, 5.0, 4.5, 1.5, 2.5, 0.5]  # SGD with lr 1 on the gradients above
    expected = _official_exp_momentum_ema(4.0, weights, momentum, total_iter)
    assert float(module.w) == pytest.approx(expected, rel=1e-6)  # after fit the model holds the EMA weights
    timm_like = EMACallback(decay=1 - momentum, warmup=True)  # the other rule gives another value: the test can fail
    module2 = _Scalar()
    _trainer(timm_like, tmp_path).fit(module2, loader)
    assert abs(float(module2.w) - expected) > 1e-3


def test_the_data_module_trains_with_train_transforms(tmp_path):
    """#16 7a: one augmentation recipe. The data module's training pipeline is the one ``train_transforms`` builds
    for the preset's settings (same steps, same parameters)."""
    from lsknet.data.detection import train_transforms
    from lsknet.data.synthetic import generate_dota_scenes

    classes = ["plane", "storage-tank", "roundabout"]
    generate_dota_scenes(tmp_path / "train", num_images=2, size=64, seed=0, classes=classes, objects_per_image=(1, 2))
    cfg = load_config("hrsc_lsknet_s_orcnn")
    cfg["data"].update(train_root=str(tmp_path / "train"), classes=classes)
    cfg["data"]["augment"]["rect_classes"] = ["roundabout"]
    _, data = detection.build(cfg)
    data.setup("fit")
    used = data.datasets["train"].transforms.transforms
    expected = train_transforms(classes, size=800, rotate_p=0.5, rect_classes=["roundabout"]).transforms
    assert [type(t) for t in used] == [type(t) for t in expected]
    assert (used[0].size, used[0].keep_ratio) == (expected[0].size, expected[0].keep_ratio) == ((800, 800), True)
    assert used[1].probs == expected[1].probs
    assert (used[2].p, used[2].angle_range, used[2].min_size) == (0.5, 180.0, 5.0)
    assert used[2].rect_classes.tolist() == expected[2].rect_classes.tolist() == [2]
