"""Run configurations: YAML presets shipped in ``lsknet/configs`` plus ``key.sub=value`` overrides.

A configuration is a plain nested dict. Its top-level ``task`` key names the task
(``classify``, ``detect`` or ``segment``); the task module turns the dict into objects.

Every configuration that enters lsknet (a preset, a user's YAML file, ``key=value`` overrides) is checked against
the task's **schema** before anything runs (:func:`validate_config`): the keys and value kinds of the presets
shipped for that task (``configs/<task>.yaml`` documents them all). An unknown key is a :class:`ConfigError` naming
it and the nearest known key (``data.batchsize`` -> ``data.batch_size``); a value of the wrong kind (a word where a
number is expected, ``trainer.max_epochs=two``) is one too. Mappings that are empty in the presets (``model.rpn``,
``model.roi``) take any keys; keys that are ``null`` in every preset take any value. ``trainer`` also takes every
Lightning ``Trainer`` argument. A new setting is added to the task's preset (with its default), never only to code.
"""

from __future__ import annotations

import copy
import difflib
import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lsknet.errors import ConfigError


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (file stems of ``lsknet/configs/*.yaml``)."""
    folder = resources.files("lsknet") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """Load a preset by name or a YAML file by path (a file may ``inherit`` a preset) and validate it against the
    task's schema (:func:`validate_config`)."""
    cfg = _load_unchecked(name_or_path)
    path = Path(name_or_path)
    source = str(path) if path.suffix in (".yaml", ".yml") or path.exists() else f"preset {name_or_path}"
    validate_config(cfg, source)
    return cfg


def _load_unchecked(name_or_path: str | Path, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`load_config` without the schema check (the schema itself is built from the presets)."""
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
    cfg = copy.deepcopy(_parse_yaml(text, source))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    parent = cfg.pop("inherit", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: 'inherit' must name a preset or YAML file, got {parent!r}")
        try:
            base = _load_unchecked(parent, (*_chain, str(name_or_path)))
        except ConfigError as err:
            raise ConfigError(f"{source}: inherit {parent!r}: {err}") from None
        cfg = merge_config(base, cfg)
    if "task" not in cfg:
        raise ConfigError(f"{source}: missing the top-level 'task' key")
    return cfg


@functools.lru_cache(maxsize=256)
def _parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data (cached: presets are parsed once per process; callers copy)."""
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{source}: not valid YAML: {str(err)[:300]}") from None


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
    if overrides and "task" in out:
        validate_config(out, "override")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# schema


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


# What a value of each kind seen in the presets may be replaced with: a number setting may take a list (image_size
# 1024 or [800, 512]); a string setting may take numbers and lists (devices: auto or 2; classes: dota1.0 or names).
_ACCEPTS = {
    "number": {"number", "list"},
    "string": {"string", "number", "list"},
    "bool": {"bool"},
    "list": {"list"},
    "mapping": {"mapping"},
}
_KIND_WORDS = {"number": "a number", "string": "a string", "bool": "true or false", "list": "a list",
               "mapping": "a mapping"}  # fmt: skip


@functools.cache
def _task_schema(task: str) -> dict[str, Any]:
    """``{key: sub-schema}`` for mappings, ``{key: set of kinds}`` for values: the union of every shipped preset of
    ``task``. Empty mappings are open (any keys)."""
    schema: dict[str, Any] = {}

    def add(node: dict[str, Any], into: dict[str, Any]) -> None:
        for key, value in node.items():
            have = into.get(key)
            if isinstance(value, dict):
                if not isinstance(have, dict):
                    mixed = have is not None and have != {"null"}  # a list or scalar in another preset
                    have = into[key] = {"__open__": mixed, "__any__": mixed}
                have["__open__"] = have["__open__"] or not value
                add(value, have)
            elif isinstance(have, dict):
                if value is not None:  # e.g. data.train: a mapping in one preset, a list of them in another
                    have["__open__"] = have["__any__"] = True
            else:
                into[key] = (have or set()) | {_kind(value)}

    for name in list_presets():
        cfg = _load_unchecked(name)
        if cfg.get("task") == task:
            add(cfg, schema)
    return schema


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _trainer_arguments() -> set[str]:
    import inspect

    import lightning as L

    return set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def validate_config(cfg: dict[str, Any], source: str = "config") -> None:
    """Check every key and value kind of ``cfg`` against its task's schema (module docstring); raise
    :class:`ConfigError` naming the first bad key (with the nearest known key) and ``source``."""
    task = cfg.get("task")
    schema = _task_schema(str(task)) if task is not None else {}
    if not schema:
        return  # unknown task: the task lookup reports it

    def walk(node: dict[str, Any], spec: dict[str, Any], prefix: str) -> None:
        known = [k for k in spec if not k.startswith("__")]
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key not in spec:
                if spec.get("__open__"):
                    continue
                if prefix == "trainer." and key in _trainer_arguments():
                    continue
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"
                raise ConfigError(f"{source}: unknown key {path}{hint}")
            expected = spec[key]
            if isinstance(expected, dict):
                if value is None or (not isinstance(value, dict) and expected.get("__any__")):
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {path} must be a mapping of settings, got {value!r}")
                walk(value, expected, f"{path}.")
                continue
            kinds = expected - {"null"}
            if not kinds or value is None:
                continue
            accepted = set().union(*(_ACCEPTS.get(k, {k}) for k in kinds))
            if "number" in accepted and isinstance(value, str) and _is_number(value):
                node[key] = value = float(value)  # YAML reads 1e-3 (no dot) as a string
            if _kind(value) not in accepted:
                want = " or ".join(sorted(_KIND_WORDS.get(k, k) for k in kinds))
                raise ConfigError(f"{source}: {path} must be {want}, got {value!r}")

    walk(cfg, schema, "")


def dump_config(cfg: dict[str, Any]) -> str:
    """The configuration as YAML text (what ``--print-config`` shows and what runs save)."""
    return yaml.safe_dump(cfg, sort_keys=False)
