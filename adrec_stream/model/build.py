"""Model factory: :func:`build_model` turns a :class:`ModelConfig` into an :class:`ADRec` or :class:`SASRec`."""

from __future__ import annotations

import torch
from torch import nn

from adrec_stream.model.adrec import ADRec
from adrec_stream.model.config import ModelConfig
from adrec_stream.model.sasrec import SASRec


def build_model(n_items: int, cfg: ModelConfig) -> ADRec | SASRec:
    """A freshly initialised model for items 1..``n_items`` (0 = padding), on CPU, in training mode.

    Raises:
        ValueError: ``n_items`` < 1.
    """
    model = ADRec(n_items, cfg) if cfg.kind == "adrec" else SASRec(n_items, cfg)
    if cfg.init_std is not None:
        normal_init(model, cfg.init_std)
    return model


def normal_init(model: nn.Module, std: float) -> None:
    """Re-initialise every ``nn.Linear`` and ``nn.Embedding`` weight of ``model`` with N(0, std²) and every
    Linear bias with 0 (``model.init_std``; the reference code's SASRec initialisation with std = 0.1).
    The item table's padding row 0 is set back to zero."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
        item_emb = getattr(model, "item_emb", None)
        if isinstance(item_emb, nn.Embedding):
            item_emb.weight[0].zero_()
