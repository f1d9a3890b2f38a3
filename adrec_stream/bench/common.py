"""Shared helpers of the speed benchmarks: machine description and model construction."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from adrec_stream.model import ModelConfig, build_model


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (small timings keep their precision, so ratios of the
    printed figures agree with the printed ratio)."""
    return float(f"{x:.{digits}g}")


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU count, torch threads, torch version, load average at the start (the machine is
    shared, so the load explains noisy figures), and the accelerator if one is used."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info["load_avg_1m"] = load_avg_1m()
    return info


def load_avg_1m() -> float | None:
    """The 1-minute load average of this machine (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def fresh_model(n_items: int, cfg: ModelConfig, seed: int, device: torch.device) -> torch.nn.Module:
    """A model with the given config and seeded initial weights (speed does not depend on the weights)."""
    torch.manual_seed(seed)
    return build_model(n_items, cfg).to(device)


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``, from ``/proc/<pid>/stat``; None if unknown
    (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, hist: torch.Tensor, tgt: torch.Tensor) -> None:
    """One optimiser step on the model's combined loss over a (B, L) history / target batch (the fast training path
    the benchmarks time)."""
    opt.zero_grad(set_to_none=True)
    model.loss(hist, tgt)["loss"].backward()
    opt.step()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()`` (synchronising CUDA before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
