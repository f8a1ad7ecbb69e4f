"""Scene prediction under ``torchrun --nproc_per_node 2`` (gloo, CPU): one scene (its windows shared among the ranks)
and three scenes (the scenes shared) give the same files as one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lsknet.tasks import detection

from .geo_helpers import write_geotiff
from .test_scenes import TRANSFORM, _module

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from geo_helpers import CentreDetector
    from lsknet.tasks import detection

    def module():
        cfg = {"data": {"tile_size": 64}}
        return SimpleNamespace(config=cfg, model=CentreDetector(), classes=("even", "odd"), eval=lambda: None)

    work, scenes = Path(sys.argv[2]), sorted(Path(sys.argv[2]).glob("s*.tif"))
    fmt = "task1,json,geojson,gpkg"
    detection.predict(module(), scenes[:1], work / "one_ddp", overlap=16, progress=False, formats=fmt)
    detection.predict(module(), scenes, work / "all_ddp", overlap=16, progress=False, formats=fmt)
    """
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _gpkg(path: Path):
    _, _, wkb, fields = pyogrio.raw.read(path, layer="detections")
    return [bytes(g) for g in wkb], [np.asarray(f).tolist() for f in fields]


def test_two_processes_equal_one(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        data = rng.integers(1, 255, (3, 150 + 20 * i, 230)).astype(np.uint8)
        data[:, :, :60] = 0
        write_geotiff(tmp_path / f"s{i}.tif", data, "EPSG:32631", TRANSFORM, nodata=0)
    scenes = sorted(tmp_path.glob("s*.tif"))
    fmt = "task1,json,geojson,gpkg"
    detection.predict(_module(tile=64), scenes[:1], tmp_path / "one", overlap=16, progress=False, formats=fmt)
    detection.predict(_module(tile=64), scenes, tmp_path / "all", overlap=16, progress=False, formats=fmt)

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(worker), str(Path(__file__).parent), str(tmp_path)]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name in ("one", "all"):
        single, multi = tmp_path / name, tmp_path / f"{name}_ddp"
        a, b = _files(single), _files(multi)
        assert sorted(a) == sorted(b)
        for key in a:
            if key.endswith(".gpkg"):  # GeoPackages hold timestamps: compare their features
                assert _gpkg(single / key) == _gpkg(multi / key)
            else:
                assert a[key] == b[key], key
    assert len(list((tmp_path / "all" / "scenes").iterdir())) == 3
