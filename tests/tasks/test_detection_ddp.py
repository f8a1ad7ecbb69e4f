"""DDP on CPU for detection: ``lsknet train`` of the detection task under ``torchrun --nproc_per_node 2`` (gloo).

Both ranks must end with identical weights (synchronised updates) and the identical validation mAP (each rank
detects its shard of the validation images; the results are gathered before the DOTA evaluation).
"""

from __future__ import annotations

from lsknet.data.synthetic import generate_dota_scenes

from .ddp_helpers import train_on_two_ranks


def test_two_process_ddp_detection_ranks_agree(tmp_path):
    kw = dict(size=128, classes=["plane", "ship"], objects_per_image=(1, 3), dense_probability=0.0)
    generate_dota_scenes(tmp_path / "train", num_images=4, seed=1, **kw)
    generate_dota_scenes(tmp_path / "val", num_images=3, seed=2, **kw)
    overrides = [
        f"data.train_root={tmp_path / 'train'}",
        f"data.val_root={tmp_path / 'val'}",
        "data.classes=[plane, ship]",
        "data.image_size=128",
        "data.batch_size=1",
        "data.eval_batch_size=1",
        "data.num_workers=0",
        "data.augment.rotate_p=0.0",
        "model.drop_path_rate=0.0",
        "model.proj_drop_rate=0.0",
        "model.rpn={train_proposals: {nms_pre: 200, max_per_img: 64}, test_proposals: {max_per_img: 64}}",
        "model.roi={num_samples: 32}",
        "trainer.max_steps=2",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.monitor=null",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"run_dir={tmp_path / 'run'}",
    ]
    reports = train_on_two_ranks(tmp_path, "detect", overrides, timeout=600)
    for report in reports:
        assert report["code"] == 0 and report["world_size"] == 2 and report["global_step"] == 2
    assert reports[0]["param_sha"] == reports[1]["param_sha"]
    assert reports[0]["metrics"]["val/mAP"] == reports[1]["metrics"]["val/mAP"]
    assert (tmp_path / "run" / "val_dota_metrics.json").is_file()
