"""Cache keys of trained checkpoints: train once per (training events, experiment config, epoch budget).

Shared by the commands that train a model on the first part of an interaction log before replaying the rest
(``adrec-stream evaluate-replay`` and ``adrec-stream demo``): a checkpoint is
cached under ``<cache_dir>/<model kind>-<key>/model.pt`` and reused when the key matches.

The key hashes the training events themselves (user, item, time of every event, in order), the whole
experiment config (``model`` + ``train``), the per-stage epoch budget and the data file's name, so a
different cut, file, config or budget never reuses a stale model. It equals the demo's historical key for the
same inputs (``format`` 2), so models cached by earlier demo runs are still found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: bump when the meaning of a cached checkpoint changes (the demo's format is 2)
CACHE_FORMAT = 2


def training_cache_key(events: Iterable[Any], exp: Any, epochs: Mapping[str, int], data_name: str) -> str:
    """16 hex digits identifying a trained checkpoint.

    Args:
        events: the training events in training order, objects with ``user``, ``item`` and ``ts``
            (:class:`~adrec_stream.data.events.Interaction`).
        exp: the experiment config (:class:`~adrec_stream.training.config.ExperimentConfig`; anything with
            ``model_dump(mode="json")``).
        epochs: epochs per stage actually used (e.g. ``{"pretrain": 8, "align": 2, "finetune": 6}``).
        data_name: the data file's name (``u.data``).

    Returns:
        The first 16 hex digits of a SHA-256 over the config, epochs, name and every event.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"exp": exp.model_dump(mode="json"), "epochs": {k: int(v) for k, v in epochs.items()},
                         "data": data_name, "format": CACHE_FORMAT}, sort_keys=True).encode())
    for x in events:
        h.update(f"{x.user_id}\t{x.item_id}\t{x.ts}\n".encode())
    return h.hexdigest()[:16]


def cached_checkpoint_path(cache_dir: str | Path, kind: str, key: str) -> Path:
    """``<cache_dir>/<kind>-<key>/model.pt`` (the file may not exist yet)."""
    return Path(cache_dir) / f"{kind}-{key}" / "model.pt"
