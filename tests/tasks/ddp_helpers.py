"""Run ``lsknet train`` under ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU) and collect what each rank
ended with: exit code, world size, strategy, global step, a hash of the weights, the callback metrics, the run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from lsknet.cli.main import main
    from lsknet.tasks import runner

    captured = {}
    train = runner.train
    REPORT_EXTRA = dict

    def capture(*args, **kwargs):
        captured["result"] = result = train(*args, **kwargs)
        return result

    runner.train = capture
    rank = int(os.environ["RANK"])
    # PREAMBLE
    code = main(["train", sys.argv[2], *sys.argv[3:]])
    if "result" not in captured:  # training raised an LSKNetError (exit code 2)
        with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
            json.dump({"code": code, "rank": rank, **REPORT_EXTRA()}, handle)
        sys.exit(code)
    result = captured["result"]
    params = torch.cat([p.detach().flatten() for p in result.module.model.parameters()]).double()
    report = {
        "code": code,
        "rank": rank,
        "world_size": result.trainer.world_size,
        "strategy": type(result.trainer.strategy).__name__,
        "global_step": result.trainer.global_step,
        "param_sha": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
        "metrics": {k: float(v) for k, v in result.trainer.callback_metrics.items()},
        "run_dir": str(result.run_dir),
        "finite": bool(torch.isfinite(params).all()),
        **REPORT_EXTRA(),
    }
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    """
)


def train_on_two_ranks(
    workdir: Path, preset: str, overrides: list[str], timeout: int = 300, preamble: str = "", expect_success=True
) -> list[dict[str, Any]]:
    """Train ``preset`` with ``overrides`` on 2 torchrun processes in ``workdir``; the reports of ranks 0 and 1.

    ``preamble``: Python run in each worker before training (``rank`` is defined; it may set ``REPORT_EXTRA`` to a
    function returning more report entries). With ``expect_success=False`` the launcher may fail; each report then
    carries the worker's exit code and the launcher's stderr is in ``reports[0]["stderr"]``.
    """
    worker = workdir / "ddp_worker.py"
    worker.write_text(WORKER.replace("# PREAMBLE", textwrap.dedent(preamble).strip() or "pass"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default" if preamble else "ignore")
    env.pop("LSKNET_RUN_DIR", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(worker), str(workdir), preset, *overrides]
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_success:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((workdir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    reports[0]["stderr"] = proc.stderr
    return reports
