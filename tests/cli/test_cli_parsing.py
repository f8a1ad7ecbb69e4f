"""The CLI parses with argparse's public API only: ``parse_known_args``, whose ``key=value`` leftovers are the
overrides, wherever they stand among the options."""

from __future__ import annotations

from pathlib import Path

import yaml

import lsknet.cli.main as cli_main
from lsknet.cli.main import main


def test_overrides_anywhere_among_options(capsys):
    assert main(["train", "classify", "optim.lr=0.5", "--print-config", "seed=7", "--strict", "data.batch_size=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.5 and cfg["seed"] == 7 and cfg["data"]["strict"] is True
    assert cfg["data"]["batch_size"] == 3
    assert main(["train", "--print-config", "classify", "optim.lr=0.25"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.25


def test_unknown_options_and_stray_arguments_are_one_line_errors(capsys):
    assert main(["train", "classify", "seed=1", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lsknet train: error: unknown option '--bogus'"]
    # a command without overrides does not swallow key=value
    assert main(["data", "synth", "--out", "x", "seed=1"]) == 2
    assert "unknown argument 'seed=1'" in capsys.readouterr().err


def test_no_argparse_internals_in_the_cli():
    folder = Path(cli_main.__file__).parent
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "_option_string_actions" not in text and "REMAINDER" not in text, path.name
