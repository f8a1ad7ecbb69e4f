"""Lightning tasks. Each task module (``classification``, ``detection``, ``segmentation``) exposes:

- ``build(cfg) -> (LightningModule, LightningDataModule)`` from a run configuration (see ``lsknet.config``);
  the LightningModule stores the whole config as the hyper-parameter ``config`` so that a checkpoint alone
  rebuilds the model;
- ``predict(module, sources, out_dir, **options) -> dict`` writing the task's prediction files;
- ``demo(out_dir, **options) -> dict`` for ``lsknet demo --task ...``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lsknet.errors import ConfigError

TASK_MODULES = {
    "classify": "lsknet.tasks.classification",
    "detect": "lsknet.tasks.detection",
    "segment": "lsknet.tasks.segmentation",
}


def get_task(name: str) -> ModuleType:
    """The task module for a config's ``task`` value."""
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name])
