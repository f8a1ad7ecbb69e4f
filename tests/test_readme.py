"""The README's two set-up commands are the ones CI runs, and the CLI it documents exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2, commands
    install_demo, install_test = commands
    assert install_demo.startswith("python -m pip install .") and install_demo.endswith("lsknet demo")
    assert "pytest" in install_test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install_test in ci_lines, "the README's test command must appear verbatim in .ci/run"


def test_commands_in_the_readme_exist():
    from lsknet.cli.main import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    text = (ROOT / "README.md").read_text()
    used = set(re.findall(r"^\s*lsknet ([a-z]+)", text, flags=re.M))
    assert used, "README shows no lsknet commands"
    missing = sorted(used - set(subcommands))
    assert not missing, f"README documents commands that do not exist: {missing}"


def expand_braces(pattern: str) -> list[str]:
    """``a_{t,s}_b`` -> ``[a_t_b, a_s_b]`` (nested groups expanded left to right)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for option in match.group(1).split(",") for name in expand_braces(head + option + tail)]


README_PRESETS = sorted(
    {
        name
        for token in re.findall(r"`([a-z_{},]*lsknet_[a-z_{},]+)`", (ROOT / "README.md").read_text())
        for name in expand_braces(token)
        if "lsknet_" in name and not name.startswith("lsknet_")
    }
)


def test_readme_names_presets():
    assert len(README_PRESETS) >= 20, README_PRESETS


@pytest.mark.parametrize("preset", README_PRESETS)
def test_presets_named_in_the_readme_exist(preset):
    from lsknet.config import list_presets

    assert preset in list_presets()
