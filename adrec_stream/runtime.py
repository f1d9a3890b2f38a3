"""Process runtime helpers shared by training, evaluation, serving and the workers: device choice, seeding and
peak memory."""

from __future__ import annotations

import random
import resource
import sys

import numpy as np
import torch

from adrec_stream.errors import ConfigError


def resolve_device(name: str | None) -> torch.device:
    """``None``/"auto" -> CUDA if available else CPU; "cpu"/"cuda"/"cuda:N" as given.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown device name.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MB (MiB) of this process, or with ``resource.RUSAGE_CHILDREN`` of its largest
    finished child (``getrusage``'s ``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    kb = resource.getrusage(who).ru_maxrss
    return round(kb / (1 << 20) if sys.platform == "darwin" else kb / 1024, 1)
