"""DDP on CPU for detection: ``lsknet train`` of the detection task under ``torchrun --nproc_per_node 2`` (gloo).

Both ranks must end with identical weights (synchronised updates) and the identical validation mAP (each rank
detects its shard of the validation images; the results are gathered before the DOTA evaluation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from lsknet.data.synthetic import generate_dota_scenes

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from lsknet.cli.main import main
    from lsknet.tasks import runner

    captured = {}
    train = runner.train

    def capture(*args, **kwargs):
        captured["result"] = result = train(*args, **kwargs)
        return result

    runner.train = capture
    code = main(["train", "detect", *sys.argv[2:]])
    result = captured["result"]
    rank = int(os.environ["RANK"])
    params = torch.cat([p.detach().flatten() for p in result.module.model.parameters()]).double()
    report = {
        "code": code,
        "world_size": result.trainer.world_size,
        "global_step": result.trainer.global_step,
        "param_sha": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
        "val_map": float(result.trainer.callback_metrics["val/mAP"]),
    }
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    """
)


def test_two_process_ddp_detection_ranks_agree(tmp_path):
    kw = dict(size=128, classes=["plane", "ship"], objects_per_image=(1, 3), dense_probability=0.0)
    generate_dota_scenes(tmp_path / "train", num_images=4, seed=1, **kw)
    generate_dota_scenes(tmp_path / "val", num_images=3, seed=2, **kw)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
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
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LSKNET_RUN_DIR", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(worker), str(tmp_path), *overrides]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["code"] == 0 and report["world_size"] == 2 and report["global_step"] == 2
    assert reports[0]["param_sha"] == reports[1]["param_sha"]
    assert reports[0]["val_map"] == reports[1]["val_map"]
    assert (tmp_path / "run" / "val_dota_metrics.json").is_file()
