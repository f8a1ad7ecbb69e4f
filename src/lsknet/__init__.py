"""lsknet: LSKNet for remote sensing in pure PyTorch."""

from __future__ import annotations

from lsknet.errors import CheckpointError, ConfigError, DatasetFormatError, LSKNetError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetFormatError",
    "LSKNetError",
    "__version__",
]
