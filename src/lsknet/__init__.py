"""lsknet: LSKNet for remote sensing in pure PyTorch."""

from __future__ import annotations

from lsknet.errors import CheckpointError, ConfigError, DatasetFormatError, LSKNetError
from lsknet.inference.optimize import optimize_for_inference
from lsknet.models import backbone as _backbone  # noqa: F401  registers timm models
from lsknet.models.factory import create_model, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetFormatError",
    "LSKNetError",
    "__version__",
    "create_model",
    "load_checkpoint",
    "optimize_for_inference",
]
