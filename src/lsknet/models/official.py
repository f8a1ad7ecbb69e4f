"""Where the official LSKNet weights are published and which lsknet model and preset each one belongs to.

lsknet downloads nothing: fetch a file once and pass its path (``checkpoint=PATH``, ``model.checkpoint=PATH``,
``pretrained_cfg_overlay=dict(file=PATH)``). OpenMMLab file names end in ``-<first 8 hex digits of the SHA-256>``;
lsknet checks that prefix whenever it reads a file whose name carries one
(:func:`lsknet.models.checkpoint.verify_hash_prefix`), so a truncated download fails with a clear message. Files
without a hash in the name (HuggingFace ``.pth.tar`` copies, Baidu Pan) are not checked: compare ``sha256sum FILE``
with a known-good copy, or load it (a wrong or truncated file fails the strict key check).

Sources: the official repository's README (github.com/zcablii/LSKNet, "Results and models") and the MMRotate 1.x
``projects/LSKNet`` README, which lists the backbones under download.openmmlab.com.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OFFICIAL_WEIGHTS", "OfficialWeights", "official_weights_for"]

_MMROTATE = "https://download.openmmlab.com/mmrotate/v1.0/lsknet"
_HF = "https://huggingface.co/GreatBird/LSKNet/resolve/main"


@dataclass(frozen=True)
class OfficialWeights:
    """One official file: its name, where it is published, the known SHA-256 prefix, and how lsknet uses it."""

    file: str
    url: str
    sha256_prefix: str | None  # first hex digits of the SHA-256 (from the file name), None when not published
    model: str  # lsknet.create_model name
    preset: str | None  # lsknet preset (lsknet train/eval); None when lsknet has none
    what: str  # dataset / result as the official README states it

    @property
    def how_to_check(self) -> str:
        """How to verify a downloaded copy."""
        if self.sha256_prefix:
            return f"sha256sum {self.file} starts with {self.sha256_prefix} (lsknet checks it when loading)"
        return "no published hash: compare sha256sum with a known-good copy; lsknet's strict key check rejects others"


OFFICIAL_WEIGHTS: tuple[OfficialWeights, ...] = (
    OfficialWeights(
        "lsk_t_backbone-2ef8a593.pth", f"{_MMROTATE}/backbones/lsk_t_backbone-2ef8a593.pth", "2ef8a593",
        "lsknet_t", "aid_lsknet_t", "ImageNet-1k 300 epochs, LSKNet-T backbone (+ head)",
    ),
    OfficialWeights(
        "lsk_s_backbone-e9d2e551.pth", f"{_MMROTATE}/backbones/lsk_s_backbone-e9d2e551.pth", "e9d2e551",
        "lsknet_s", "aid_lsknet_s", "ImageNet-1k 300 epochs, LSKNet-S backbone (+ head)",
    ),
    OfficialWeights(
        "lsk_t_backbone.pth.tar", f"{_HF}/lsk_t_backbone.pth.tar", None,
        "lsknet_t", "aid_lsknet_t", "ImageNet-1k LSKNet-T backbone, HuggingFace copy (the README's current link)",
    ),
    OfficialWeights(
        "lsk_s_backbone.pth.tar", f"{_HF}/lsk_s_backbone.pth.tar", None,
        "lsknet_s", "aid_lsknet_s", "ImageNet-1k LSKNet-S backbone, HuggingFace copy (the README's current link)",
    ),
    OfficialWeights(
        "lsk_t_fpn_1x_dota_le90_20230206-3ccee254.pth",
        f"{_MMROTATE}/lsk_t_fpn_1x_dota_le90/lsk_t_fpn_1x_dota_le90_20230206-3ccee254.pth", "3ccee254",
        "lsknet_t_orcnn", "dota_lsknet_t_orcnn", "DOTA-v1.0 Oriented R-CNN, 81.37 mAP (15 classes)",
    ),
    OfficialWeights(
        "lsk_s_fpn_1x_dota_le90_20230116-99749191.pth",
        f"{_MMROTATE}/lsk_s_fpn_1x_dota_le90/lsk_s_fpn_1x_dota_le90_20230116-99749191.pth", "99749191",
        "lsknet_s_orcnn", "dota_lsknet_s_orcnn", "DOTA-v1.0 Oriented R-CNN, 81.64 mAP (15 classes)",
    ),
    OfficialWeights(
        "lsk_s_ema_fpn_1x_dota_le90_20230212-30ed4041.pth",
        f"{_MMROTATE}/lsk_s_ema_fpn_1x_dota_le90/lsk_s_ema_fpn_1x_dota_le90_20230212-30ed4041.pth", "30ed4041",
        "lsknet_s_orcnn", "dota_lsknet_s_orcnn",
        "DOTA-v1.0 Oriented R-CNN, EMA fine-tune (LSKNet-S*), 81.85 mAP; the plain keys hold the EMA weights",
    ),
    OfficialWeights(
        "lsk_s_fpn_3x_hrsc_le90_20230205-4a4a39ce.pth",
        f"{_MMROTATE}/lsk_s_fpn_3x_hrsc_le90/lsk_s_fpn_3x_hrsc_le90_20230205-4a4a39ce.pth", "4a4a39ce",
        "lsknet_s_orcnn", "hrsc_lsknet_s_orcnn", "HRSC2016 Oriented R-CNN, 90.65 mAP(07) / 98.46 mAP(12) (1 class)",
    ),
    OfficialWeights(
        "(name chosen by the uploader)", "https://pan.baidu.com/s/1sXyi23PhVwpuMRRdwsIJlQ?pwd=izs8", None,
        "lsknet_s_orcnn", "fair1m_lsknet_s_orcnn", "FAIR1M-v1.0 Oriented R-CNN, 47.87 mAP (37 classes; Baidu Pan)",
    ),
)


def official_weights_for(model: str) -> list[OfficialWeights]:
    """The official files that load into ``lsknet.create_model(model)`` (e.g. ``"lsknet_t"``)."""
    return [w for w in OFFICIAL_WEIGHTS if w.model == model]
