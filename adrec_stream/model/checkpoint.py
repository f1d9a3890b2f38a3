"""Model checkpoints: one ``torch.save`` file holding plain data only, written atomically, read with
``torch.load(weights_only=True)`` (no arbitrary code runs while loading).

File content (format version 1): ``{"format": "adrec-stream-checkpoint", "format_version": 1, "state_dict",
"model_config" (ModelConfig as a dict), "n_items", "vocab" (raw external id of item i+1 at index i),
"config" (caller's dict, e.g. the experiment config), "meta" (caller's dict, e.g. "item_counts"),
"vocab_sha256" (:func:`vocab_fingerprint` of "vocab"; optional: files written before it was added load
without the check)}``.

Loading refuses a checkpoint whose vocabulary does not match its weights: the item table
(``state_dict["item_emb.weight"]``) must have ``len(vocab) + 1`` rows (row 0 is padding), and when the file
carries ``vocab_sha256`` the stored vocabulary must hash to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from adrec_stream.errors import CheckpointError
from adrec_stream.model.build import build_model
from adrec_stream.model.config import ModelConfig

FORMAT_NAME = "adrec-stream-checkpoint"
FORMAT_VERSION = 1
#: file name used when a checkpoint path names a directory
FILE_NAME = "model.pt"

_KEYS = ("format", "format_version", "state_dict", "model_config", "n_items", "vocab", "config", "meta")
#: optional payload key: fingerprint of the vocabulary (absent in files written before it was added)
VOCAB_FINGERPRINT_KEY = "vocab_sha256"
#: state-dict key of the item table (``n_items + 1`` rows, row 0 = padding) in ADRec and SASRec
ITEM_TABLE_KEY = "item_emb.weight"


def vocab_fingerprint(vocab: list[str]) -> str:
    """SHA-256 (hex) of a vocabulary: of its compact JSON list encoding in UTF-8 (unambiguous, order-sensitive).

    Stored by :func:`save_checkpoint` as ``vocab_sha256`` and checked by :func:`load_checkpoint`.
    """
    text = json.dumps(list(vocab), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` (rebuilt, weights loaded, in eval mode on the requested device), ``vocab``
    (raw external id of internal item i+1 at index i), the caller's ``config`` and ``meta`` dicts and the file
    ``path``."""

    model: torch.nn.Module
    vocab: list[str]
    config: dict
    meta: dict
    path: Path


def _resolve(path: str | Path, *, for_writing: bool) -> Path:
    p = Path(path)
    if p.is_dir() or (for_writing and str(path).endswith(("/", os.sep))):
        return p / FILE_NAME
    return p


def _plain(value: Any, where: str) -> Any:
    """Copy ``value`` as plain data (dict with str keys / list / str / int / float / bool / None); tuples → lists,
    numpy-like scalars → Python scalars. Raises TypeError naming the offending key."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint {where}: keys must be str, got {type(k).__name__} {k!r}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _plain(value.item(), where)
    raise TypeError(
        f"checkpoint {where}: only dict/list/str/int/float/bool/None can be stored, got {type(value).__name__} "
        "(convert arrays with .tolist())"
    )


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, *, vocab: list[str], config: dict, meta: dict | None = None
) -> Path:
    """Write ``model`` (an :class:`ADRec` / :class:`SASRec`) atomically (temp file in the same folder + fsync +
    ``os.replace``), so readers never see a partial file.

    Args:
        path: a file path, or an existing directory / a path ending in "/" (then ``<dir>/model.pt``). Parent
            folders are created.
        model: the model; its ``cfg`` and ``n_items`` are stored, the state dict is copied to CPU.
        vocab: raw external item ids, ``len(vocab) == model.n_items``.
        config: plain dict stored as is (e.g. the experiment config).
        meta: optional plain dict (e.g. ``{"item_counts": [...]}`` of length n_items + 1).

    Returns:
        The path of the written file.

    Raises:
        ValueError: vocab length differs from ``model.n_items`` or a vocab entry is not a str.
        TypeError: config / meta hold something other than plain data.
    """
    n_items = int(model.n_items)
    if len(vocab) != n_items or not all(isinstance(v, str) for v in vocab):
        raise ValueError(
            f"vocab must be a list of {n_items} str (raw id of item i+1 at index i), got {len(vocab)} entries"
        )
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "model_config": model.cfg.model_dump(),
        "n_items": n_items,
        "vocab": list(vocab),
        "config": _plain(dict(config), "config"),
        "meta": _plain(dict(meta or {}), "meta"),
        VOCAB_FINGERPRINT_KEY: vocab_fingerprint(vocab),
    }
    target = _resolve(path, for_writing=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` and rebuild its model.

    Args:
        path: the file, or the directory holding ``model.pt``.
        device: where to put the model ("cpu", "cuda", ...).

    Returns:
        :class:`Checkpoint` with the model in eval mode.

    Raises:
        CheckpointError: missing, truncated, corrupted (not a torch file / refused by the weights-only loader),
            written by a newer format, or inconsistent (config, vocab, weights); a vocabulary that does not
            match the weights (item table rows != len(vocab) + 1, or a stored ``vocab_sha256`` that the
            vocabulary does not hash to) is refused too. The message names the path.
    """
    p = _resolve(path, for_writing=False)
    hint = "re-save it from a trained model (adrec-stream train) or use another registry version"
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint not found: {p} (expected a model file written by `adrec-stream train`, or its output "
            f"folder holding {FILE_NAME})"
        )
    try:
        obj = torch.load(p, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for damaged files (RuntimeError, EOFError, UnpicklingError...)
        msg = str(err).splitlines()[0][:200] if str(err) else ""
        raise CheckpointError(
            f"{p}: cannot read checkpoint ({type(err).__name__}: {msg}); the file is truncated, corrupted or not an "
            f"adrec-stream checkpoint: {hint}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{p}: not an adrec-stream checkpoint (missing format marker): {hint}")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{p}: checkpoint lacks {missing}: {hint}")
    version = obj["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{p}: checkpoint format version {version!r} is not supported by this build "
            f"(supports 1..{FORMAT_VERSION}); "
            "upgrade adrec-stream or re-save the checkpoint"
        )
    try:
        cfg = ModelConfig.model_validate(obj["model_config"])
    except ValidationError as err:
        first = err.errors()[0]["msg"]
        raise CheckpointError(f"{p}: invalid model config in checkpoint ({first}): {hint}") from None
    n_items, vocab = obj["n_items"], obj["vocab"]
    if not isinstance(n_items, int) or n_items < 1:
        raise CheckpointError(f"{p}: invalid n_items {n_items!r}: {hint}")
    if not isinstance(vocab, list) or len(vocab) != n_items or not all(isinstance(v, str) for v in vocab):
        raise CheckpointError(f"{p}: vocab is not a list of {n_items} str: {hint}")
    if not isinstance(obj["config"], dict) or not isinstance(obj["meta"], dict):
        raise CheckpointError(f"{p}: config/meta are not dicts: {hint}")
    table = obj["state_dict"].get(ITEM_TABLE_KEY) if isinstance(obj["state_dict"], dict) else None
    if isinstance(table, torch.Tensor) and table.ndim == 2 and table.shape[0] != len(vocab) + 1:
        raise CheckpointError(
            f"{p}: vocabulary has {len(vocab)} items but the item table has {table.shape[0]} rows "
            f"({len(vocab) + 1} expected): the checkpoint's vocabulary does not match its weights; {hint}"
        )
    if VOCAB_FINGERPRINT_KEY in obj:
        stored = obj[VOCAB_FINGERPRINT_KEY]
        if not isinstance(stored, str) or stored != vocab_fingerprint(vocab):
            raise CheckpointError(
                f"{p}: the vocabulary's fingerprint ({VOCAB_FINGERPRINT_KEY}) does not match the one recorded when "
                f"the checkpoint was saved: the vocabulary was changed after saving and does not match its "
                f"weights; {hint}"
            )
    model = build_model(n_items, cfg)
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        detail = str(err).splitlines()[0][:200]
        raise CheckpointError(f"{p}: weights do not fit the stored model config ({detail}): {hint}") from None
    model.to(device).eval()
    return Checkpoint(model=model, vocab=list(vocab), config=obj["config"], meta=obj["meta"], path=p)
