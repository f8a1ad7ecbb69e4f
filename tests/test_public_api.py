"""The small, stable public API of ``lsknet``."""

from __future__ import annotations

import subprocess
import sys

import lsknet


def test_every_public_name_resolves():
    for name in lsknet.__all__:
        assert getattr(lsknet, name) is not None, name


def test_import_registers_timm_models_without_pulling_in_lightning():
    code = (
        "import sys, lsknet, timm; assert 'lsknet_t' in timm.list_models('lsknet*'); print('lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_errors_share_one_root():
    for err in (lsknet.CheckpointError, lsknet.ConfigError, lsknet.DatasetFormatError):
        assert issubclass(err, lsknet.LSKNetError)
