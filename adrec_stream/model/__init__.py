"""ADRec (KDD 2025) and SASRec models, their config and checkpoints.

Public API: :class:`ModelConfig`, :func:`build_model`, :class:`ADRec`, :class:`SASRec`,
:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`Checkpoint`, :func:`trim_left_padding`.
"""

from __future__ import annotations

from adrec_stream.model.adrec import ADRec
from adrec_stream.model.base import SequenceModel, trim_left_padding
from adrec_stream.model.build import build_model
from adrec_stream.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from adrec_stream.model.config import ModelConfig
from adrec_stream.model.sasrec import SASRec

__all__ = [
    "ADRec",
    "Checkpoint",
    "ModelConfig",
    "SASRec",
    "SequenceModel",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "trim_left_padding",
]
