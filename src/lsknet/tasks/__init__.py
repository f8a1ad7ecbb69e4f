"""Lightning tasks. Each task module (``classification``, ``detection``, ``segmentation``) exposes:

- ``build(cfg) -> (LightningModule, LightningDataModule)`` from a run configuration (see ``lsknet.config``);
  the LightningModule stores the whole config as the hyper-parameter ``config`` so that a checkpoint alone
  rebuilds the model;
- ``predict(module, sources, out_dir, **options) -> dict`` writing the task's prediction files;
- a demo entry ``(out_dir, **options) -> dict`` for ``lsknet demo --task ...``, named in :data:`DEMO_ENTRIES`: a demo is
  a use of a task, so a separate demo module may import its task module, never the reverse.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from lsknet.errors import ConfigError

TASK_MODULES = {
    "classify": "lsknet.tasks.classification",
    "detect": "lsknet.tasks.detection",
    "segment": "lsknet.tasks.segmentation",
}

# ``lsknet demo --task NAME``: (module, function) of each task's demo.
DEMO_ENTRIES = {
    "classify": ("lsknet.tasks.classification_demo", "demo"),
    "detect": ("lsknet.tasks.detection_demo", "run_demo"),
    "segment": ("lsknet.tasks.segmentation", "demo"),
}


def get_task(name: str) -> ModuleType:
    """The task module for a config's ``task`` value."""
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name])


def get_demo(name: str) -> Callable[..., dict]:
    """The demo function of a task (see :data:`DEMO_ENTRIES`)."""
    if name not in DEMO_ENTRIES:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(DEMO_ENTRIES)}")
    module, function = DEMO_ENTRIES[name]
    return getattr(importlib.import_module(module), function)
