"""Reading LSKNet checkpoints in every official layout and loading them strictly into a backbone.

Layouts accepted (all read with ``torch.load(..., weights_only=True)``):

- a plain state dict ``{"patch_embed1.proj.weight": ..., ...}``;
- a training checkpoint ``{"state_dict": ..., "state_dict_ema": ..., "optimizer": ...}`` (the official ImageNet
  files ``lsk_t_backbone-2ef8a593.pth`` / ``lsk_s_backbone-e9d2e551.pth``), or ``{"model": ...}``;
- an MMRotate detector / segmentor checkpoint ``{"meta": ..., "state_dict": {"backbone.patch_embed1...": ...,
  "neck....": ...}}``: the ``backbone.`` sub-dict is taken, everything else ignored;
- any of these with DDP ``module.`` or ``torch.compile`` ``_orig_mod.`` prefixes.

EMA: like timm, ``state_dict_ema`` (or ``model_ema``) is preferred when present and ``use_ema=True`` (the default),
so ``lsknet.create_model(..., checkpoint=PATH)`` and ``timm.create_model(..., pretrained_cfg_overlay=dict(file=PATH))``
load the very same tensors. Pass ``use_ema=False`` for the raw weights.

Every file lsknet reads (backbone, detector, segmenter, Lightning ``.ckpt``, MMRotate, timm, GeoSeg) goes through
:func:`load_checkpoint_file`: one ``torch.load(weights_only=True)`` with one list of allowed plain-data globals (NumPy
scalars, ``argparse.Namespace``), and a SHA-256 check when the file name carries a hash prefix
(``lsk_t_backbone-2ef8a593.pth``: the first 8 hex digits of the file's SHA-256, the torch hub / OpenMMLab convention).

Loading is strict for the backbone: a missing key, a shape mismatch (e.g. an LSKNet-T file into an LSKNet-S model)
raises :class:`~lsknet.errors.CheckpointError` naming the keys. The classifier ``head`` is loaded when its shape
matches the model's, otherwise skipped and reported (fine-tuning to a new number of classes).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lsknet.errors import CheckpointError

__all__ = [
    "LoadReport",
    "check_state_dict",
    "load_backbone_weights",
    "load_checkpoint_file",
    "load_state_dict_checked",
    "verify_hash_prefix",
    "normalize_state_dict",
    "read_checkpoint",
    "unwrap_checkpoint",
]

_log = logging.getLogger(__name__)

# Keys under which training frameworks nest the weights, in order of preference (EMA first when wanted).
_EMA_KEYS = ("state_dict_ema", "model_ema")
_PLAIN_KEYS = ("state_dict", "model", "module", "net")
# Wrapper prefixes added by DDP and torch.compile; removed in any order.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_PREFIX = "head."
FIRST_CONV = "patch_embed1.proj.weight"
LSK_MODULE = ".attn.spatial_gating_unit."


def unwrap_checkpoint(obj: object, *, use_ema: bool = True, source: str = "checkpoint") -> dict[str, Tensor]:
    """Return the tensor dict nested in a loaded checkpoint object (see module doc for the layouts).

    ``source`` only names the origin in error messages. Non-tensor entries (optimizer, meta) are dropped.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a dict of tensors or a training checkpoint, not {type(obj).__name__}"
        )
    nested = obj
    for _ in range(3):  # {"state_dict": {"model": ...}} style double nesting
        if any(isinstance(v, Tensor) for v in nested.values()):
            break
        keys = (_EMA_KEYS if use_ema else ()) + _PLAIN_KEYS
        inner = next((nested[k] for k in keys if isinstance(nested.get(k), Mapping) and nested[k]), None)
        if inner is None:
            break
        nested = inner
    tensors = {str(k): v for k, v in nested.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source}: no weights found (top-level keys: {sorted(map(str, obj.keys()))[:8]}); expected a state dict "
            "or a dict with 'state_dict', 'state_dict_ema' or 'model'"
        )
    return tensors


def normalize_state_dict(state_dict: Mapping[str, Tensor], prefix: str | None = None) -> dict[str, Tensor]:
    """Strip ``module.``/``_orig_mod.`` wrappers and select the backbone sub-dict.

    ``prefix``: take only keys starting with it (e.g. ``"backbone."``) and strip it. ``None`` detects it: when no key
    looks like an LSKNet key but some start with ``backbone.`` (MMRotate / MMSeg checkpoints), those are taken.
    """
    cleaned: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for wrapper in _WRAPPER_PREFIXES:
                if key.startswith(wrapper):
                    key, stripped = key[len(wrapper) :], True
        cleaned[key] = value
    if prefix is None and not any(k.startswith("patch_embed1.") for k in cleaned):
        if any(k.startswith("backbone.") for k in cleaned):
            prefix = "backbone."
    if prefix:
        cleaned = {k[len(prefix) :]: v for k, v in cleaned.items() if k.startswith(prefix)}
    return cleaned


def _data_only_globals() -> list:
    """Plain-data classes that real checkpoints carry besides tensors, allowed for ``weights_only`` loading:
    ``argparse.Namespace`` (timm training ``args``) and NumPy scalars/dtypes (MMCV ``meta``, e.g. best scores),
    under both the NumPy 1 and NumPy 2 module paths. None of them can run code."""
    allowed: list = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return allowed
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed += [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


# ``name-<hex>.ext``: torch hub / OpenMMLab files carry the first hex digits of their SHA-256 (8 or more). At least one
# letter a-f is required so that dates and counters (``run-20241130.pth``) are not mistaken for hashes.
_HASH_RE = re.compile(r"-(?=[0-9]*[a-f])([0-9a-f]{8,64})\.[A-Za-z0-9.]+$")


def verify_hash_prefix(path: str | Path) -> str | None:
    """Check a file whose name carries a SHA-256 prefix (``lsk_t_backbone-2ef8a593.pth``); return the prefix or None.

    Raises :class:`CheckpointError` when the file's SHA-256 does not start with it (a truncated download, another
    file renamed): the message gives both digests. Names without such a suffix are not checked.
    """
    path = Path(path)
    match = _HASH_RE.search(path.name)
    if match is None:
        return None
    prefix = match.group(1)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if not actual.startswith(prefix):
        raise CheckpointError(
            f"{path}: SHA-256 mismatch: the file name says it starts with {prefix} but it is "
            f"{actual[: len(prefix)]}... (full {actual}); "
            "the download is incomplete or this is another file; download it again"
        )
    return prefix


def load_checkpoint_file(path: str | Path, *, mmap: bool = False) -> object:
    """The one way lsknet reads a checkpoint file: ``torch.load(..., weights_only=True)`` on the CPU with the
    plain-data globals real checkpoints carry (NumPy scalars in MMCV ``meta``, ``argparse.Namespace`` in timm ``args``)
    allowed, after :func:`verify_hash_prefix`. Returns the loaded object unchanged (any layout).

    Raises :class:`CheckpointError` when the file is missing, fails its hash check, is unreadable or would need to run
    code to unpickle. ``mmap=True`` maps the tensors instead of reading them (cheap look at the metadata; files in
    the legacy non-zip format are read whole).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    verify_hash_prefix(path)
    try:
        with torch.serialization.safe_globals(_data_only_globals()):
            if mmap and zipfile.is_zipfile(path):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot read checkpoint: refused to unpickle (weights_only=True): {first}"
        ) from err
    except Exception as err:  # truncated file, not a torch file, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(err).__name__}: {first}") from err


def read_checkpoint(path: str | Path, *, use_ema: bool = True, prefix: str | None = None) -> dict[str, Tensor]:
    """Read a checkpoint file into a clean backbone state dict (un-nested, wrapper and ``backbone.`` prefixes gone).

    Raises :class:`CheckpointError` as :func:`load_checkpoint_file` does, or when the file holds no weights.
    """
    obj = load_checkpoint_file(path)
    return normalize_state_dict(unwrap_checkpoint(obj, use_ema=use_ema, source=str(path)), prefix=prefix)


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did: keys loaded, head status, keys ignored."""

    loaded: list[str] = field(default_factory=list)
    head: str = "absent"  # "loaded" | "skipped (shape ...)" | "not in checkpoint" | "model has no head" | "absent"
    unexpected: list[str] = field(default_factory=list)
    adapted_first_conv: bool = False
    # LSK ablation variants (``lsk_*`` kwargs): LSK-module keys missing from / not fitting the checkpoint, kept at
    # the model's initial values (strict=False for those keys only).
    lsk_skipped: list[str] = field(default_factory=list)


def _short(keys: list[str], n: int = 6) -> str:
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str, what: str, strict: bool = True, hint: str = ""
) -> None:
    """The one fit report: raise :class:`CheckpointError` naming the keys when ``state_dict`` does not fit ``model``:
    shape mismatches always, missing and unexpected keys when ``strict``. ``what`` names the model in the message;
    ``hint`` is appended to it (e.g. which setting to check). A ``backbone.*`` shape mismatch adds a wrong-variant
    hint."""
    target = model.state_dict()
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)})"
        for k, v in state_dict.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    problems = []
    if mismatched:
        variant = " (wrong backbone variant?)" if any(m.startswith("backbone.") for m in mismatched) else ""
        problems.append(f"{len(mismatched)} shape mismatch(es){variant}: {_short(mismatched, 3)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): {_short(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_short(unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {what}: " + "; ".join(problems) + (f" {hint}" if hint else ""))


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str, what: str, strict: bool = True, hint: str = ""
) -> None:
    """:func:`check_state_dict`, then load ``state_dict`` into ``model``."""
    check_state_dict(model, state_dict, source=source, what=what, strict=strict, hint=hint)
    model.load_state_dict(dict(state_dict), strict=strict)


def match_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str = "checkpoint",
    adapt_first_conv: bool = True,
) -> tuple[dict[str, Tensor], LoadReport]:
    """Check ``state_dict`` against ``model`` strictly for backbone keys; return what to load and a report.

    Missing backbone keys and shape mismatches raise :class:`CheckpointError` naming the keys. The head is kept when
    its shapes match; otherwise the model's own head tensors are kept (reported). A first conv whose input channels
    differ (``in_chans != 3``) is adapted with timm's ``adapt_input_conv`` (repeat channels, rescale by 3/in_chans;
    sum for 1 channel); with ``adapt_first_conv=False`` it is passed through unchanged (timm adapts it later).
    For an LSK ablation variant (``model.lsk_is_official`` false) the LSK-module keys (``.attn.spatial_gating_unit.``)
    that are missing or mis-shaped keep the model's initial values and are listed in ``report.lsk_skipped``.
    """
    target = model.state_dict()
    lsk_tolerant = getattr(model, "lsk_is_official", True) is False
    report = LoadReport()
    out: dict[str, Tensor] = {}
    missing, mismatched = [], []
    head_keys = [k for k in target if k.startswith(HEAD_PREFIX)]
    for key, want in target.items():
        if key.startswith(HEAD_PREFIX):
            continue
        have = state_dict.get(key)
        if lsk_tolerant and LSK_MODULE in key and (have is None or have.shape != want.shape):
            out[key] = want
            report.lsk_skipped.append(key)
            continue
        if have is None:
            missing.append(key)
            continue
        if key == FIRST_CONV and have.shape != want.shape and have.ndim == 4 and have.shape[0] == want.shape[0]:
            if have.shape[2:] == want.shape[2:]:
                if not adapt_first_conv:
                    out[key] = have
                    continue
                from timm.models import adapt_input_conv

                have = adapt_input_conv(want.shape[1], have, base_chans=have.shape[1])
                report.adapted_first_conv = True
        if have.shape != want.shape:
            mismatched.append(f"{key} (checkpoint {tuple(have.shape)} vs model {tuple(want.shape)})")
            continue
        out[key] = have
    if missing or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_short(mismatched, 3)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_short(missing)}")
        hint = ""
        if mismatched and any(k.startswith("patch_embed1.") for k in mismatched):
            hint = " (wrong LSKNet variant? e.g. an LSKNet-T file into an LSKNet-S model)"
        raise CheckpointError(f"{source}: does not fit the model{hint}: " + "; ".join(parts))
    if head_keys:
        have_head = {k: state_dict[k] for k in head_keys if k in state_dict}
        if len(have_head) < len(head_keys):
            report.head = "not in checkpoint"
        elif all(have_head[k].shape == target[k].shape for k in head_keys):
            out.update(have_head)
            report.head = "loaded"
        else:
            shapes = ", ".join(f"{k} {tuple(have_head[k].shape)} vs {tuple(target[k].shape)}" for k in head_keys)
            report.head = f"skipped (shape {shapes})"
        if report.head != "loaded":
            for k in head_keys:
                out[k] = target[k]
    elif any(k.startswith(HEAD_PREFIX) for k in state_dict):
        report.head = "model has no head"
    report.loaded = [k for k in out if not (k.startswith(HEAD_PREFIX) and report.head != "loaded")]
    report.unexpected = sorted(k for k in state_dict if k not in target)
    return out, report


def _refuse_trained_lsknet_checkpoint(state_dict: Mapping[str, Tensor], source: str) -> None:
    """A checkpoint written by ``lsknet train`` (every key under the task's ``model.``) is not backbone weights:
    say which option takes it instead of listing hundreds of missing keys."""
    if not state_dict or any(k.startswith("patch_embed1.") for k in state_dict):
        return
    if all(k.startswith("model.") for k in state_dict):
        raise CheckpointError(
            f"{source} is a trained lsknet checkpoint (from lsknet train), not backbone weights: continue its run "
            f"with `lsknet train --resume {source}`, evaluate or predict with `--checkpoint {source}`, or start a "
            f"detection/segmentation run from the whole trained model with model.checkpoint={source}; "
            "this option (backbone weights) takes e.g. the official lsk_t_backbone-2ef8a593.pth"
        )


def load_backbone_weights(
    model: nn.Module,
    state_dict_or_path: Mapping[str, Tensor] | str | Path,
    prefix: str | None = None,
    *,
    use_ema: bool = True,
) -> LoadReport:
    """Load LSKNet weights into ``model`` (an ``LSKNet`` or a timm ``features_only`` wrapper around one).

    ``state_dict_or_path``: a file path (any layout, see module doc) or an already read state dict (nested training
    dicts and ``backbone.``/``module.`` prefixes are handled too). ``prefix`` selects a sub-dict explicitly.
    Strict for backbone keys (raises :class:`CheckpointError` naming the keys); the head is loaded only if its shape
    fits. Keys of the checkpoint the model does not have (pruned stages, detector necks) are logged and returned.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        source = str(state_dict_or_path)
        state_dict = read_checkpoint(state_dict_or_path, use_ema=use_ema, prefix=prefix)
    else:
        source = "state dict"
        state_dict = normalize_state_dict(
            unwrap_checkpoint(state_dict_or_path, use_ema=use_ema, source=source), prefix=prefix
        )
    _refuse_trained_lsknet_checkpoint(state_dict, source)
    inner = getattr(model, "model", None)  # timm FeatureGetterNet keeps the network under .model
    target = inner if isinstance(inner, nn.Module) and not hasattr(model, "patch_embed1") else model
    to_load, report = match_state_dict(target, state_dict, source=source)
    target.load_state_dict(to_load, strict=True)
    if report.head.startswith("skipped") or report.head == "not in checkpoint":
        _log.warning("%s: classifier head %s; keeping the model's initial head", source, report.head)
    if report.lsk_skipped:
        _log.warning(
            "%s: LSK ablation variant: %d LSK-module tensor(s) not in the checkpoint or of another shape keep their "
            "initial values (strict=False for these only): %s",
            source,
            len(report.lsk_skipped),
            _short(report.lsk_skipped),
        )
    if report.adapted_first_conv:
        _log.info("%s: adapted patch_embed1.proj.weight to the model's input channels", source)
    if report.unexpected:
        _log.info(
            "%s: ignored %d key(s) the model does not have: %s",
            source,
            len(report.unexpected),
            _short(report.unexpected),
        )
    return report
