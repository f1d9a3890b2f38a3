"""Model factory: :func:`build_model` turns a :class:`ModelConfig` into an :class:`ADRec` or :class:`SASRec`."""

from __future__ import annotations

from adrec_stream.model.adrec import ADRec
from adrec_stream.model.config import ModelConfig
from adrec_stream.model.sasrec import SASRec


def build_model(n_items: int, cfg: ModelConfig) -> ADRec | SASRec:
    """A freshly initialised model for items 1..``n_items`` (0 = padding), on CPU, in training mode.

    Raises:
        ValueError: ``n_items`` < 1.
    """
    if cfg.kind == "adrec":
        return ADRec(n_items, cfg)
    return SASRec(n_items, cfg)
