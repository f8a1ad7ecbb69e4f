"""Run configurations: YAML presets shipped in ``lsknet/configs`` plus ``key.sub=value`` overrides.

A configuration is a plain nested dict. Its top-level ``task`` key names the task
(``classify``, ``detect`` or ``segment``); the task module turns the dict into objects.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lsknet.errors import ConfigError


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (file stems of ``lsknet/configs/*.yaml``)."""
    folder = resources.files("lsknet") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a preset by name or a YAML file by path; a preset may ``inherit`` another preset."""
    if str(name_or_path) in _chain:
        raise ConfigError(f"config inheritance loops: {' -> '.join([*_chain, str(name_or_path)])}")
    if "\x00" in str(name_or_path):
        raise ConfigError(f"bad config name {str(name_or_path)!r} (NUL byte)")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{path}: cannot read the config as UTF-8 text ({err})") from None
        source = str(path)
    else:
        name = str(name_or_path)
        if name not in list_presets():
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
        text = (resources.files("lsknet") / "configs" / f"{name}.yaml").read_text()
        source = f"preset {name}"
    try:
        cfg = yaml.safe_load(text) or {}
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{source}: not valid YAML: {str(err)[:300]}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    parent = cfg.pop("inherit", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: 'inherit' must name a preset or YAML file, got {parent!r}")
        try:
            base = load_config(parent, (*_chain, str(name_or_path)))
        except ConfigError as err:
            raise ConfigError(f"{source}: inherit {parent!r}: {err}") from None
        cfg = merge_config(base, cfg)
    if "task" not in cfg:
        raise ConfigError(f"{source}: missing the top-level 'task' key")
    return cfg


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``3``, ``1e-3``, ``[1,2]``, ``null``).

    Only keys that exist in the configuration may be overridden, so typos fail loudly.
    A key whose current value is ``null`` or a mapping may receive any value.
    """
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "<top level>"
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a mapping)"
                raise ConfigError(f"bad override key {key!r}: no {part!r} under {where}; known keys: {known}")
            if depth < len(parts) - 1:
                node = node[part]
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        node[parts[-1]] = value
    return out


def dump_config(cfg: dict[str, Any]) -> str:
    """The configuration as YAML text (what ``--print-config`` shows and what runs save)."""
    return yaml.safe_dump(cfg, sort_keys=False)
