"""Training-speed benchmark: seconds per epoch of ADRec, fast path vs reference-equivalent path.

* fast path: one window per user (last <= L+1 items), length-bucketed batches trimmed to their longest window,
  CE logits only at non-padding positions, one backward of 0.5·(CE + MSE).
* reference-equivalent path (what the reference code does, run with this project's model): batches in user order
  padded to the full L = 50, logits at every position (padding ignored), and two backward passes (CE, then MSE,
  gradients summed: PCGrad without conflict projection).

Both sides use the same model config, the same initial weights and Adam (lr 1e-3, weight decay 1e-5). Steps of the
two sides are interleaved so that load from other processes hits both alike. The reference side measures a few
steps (all of its batches have the same shape) and multiplies their median by its batch count (the median keeps
a first-step or load spike from inflating the reference); the fast side runs the
whole epoch, or with ``steps`` given, that many batches picked at evenly spaced quantiles of batch size (tokens),
and the stratified estimate ``sum(measured) · batches / steps``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adrec_stream.bench.common import fresh_model, machine_info, sig, timed, train_step
from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import left_pad, training_windows, window_batches
from adrec_stream.model import ModelConfig

ADAM_LR = 1e-3
ADAM_WEIGHT_DECAY = 1e-5
DEFAULT_REFERENCE_STEPS = 3


def _reference_batch(windows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-width (B, width) history/targets of a list of windows, as the reference pads them."""
    full = left_pad(windows, width + 1)
    hist = full[:, :-1]
    return hist.contiguous(), torch.where(hist > 0, full[:, 1:], torch.zeros_like(hist)).contiguous()


def _reference_step(model, opt, hist: torch.Tensor, tgt: torch.Tensor) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    ce, mse = model.loss_terms(hist, tgt, gather_valid=False)
    (0.5 * ce).backward(retain_graph=True)
    ce_grads = [None if p.grad is None else p.grad.clone() for p in params]
    opt.zero_grad(set_to_none=True)
    (0.5 * mse).backward()
    for p, g in zip(params, ce_grads, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    opt.step()


def bench_train(
    dataset: str | Path,
    *,
    steps: int | None = None,
    reference_steps: int | None = None,
    batch_size: int = 512,
    cfg: ModelConfig | None = None,
    seed: int = 2025,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Measure seconds per training epoch on ``dataset`` (a ``dataset.pkl`` or its folder).

    Args:
        steps: batches measured per side (None: the fast side runs the full epoch, the reference side
            ``reference_steps`` or 3).
        reference_steps: reference-side batches when ``steps`` is None.
        batch_size: windows per batch (reference: 512).
        cfg: model config (default: :class:`ModelConfig` defaults, i.e. ADRec d=128, L=50, "att", T=32).
        seed: weight-init and shuffling seed.
        device: torch device.

    Returns:
        JSON-ready dict with ``epoch_s``, ``reference_epoch_s``, ``speedup``, ``steps_measured`` and details.

    Raises:
        DataFileError: the dataset cannot be read. ValueError: steps < 1.
    """
    cfg = cfg or ModelConfig()
    dev = torch.device(device)
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ds = load_adrec_dataset(dataset)
    windows = training_windows(ds.train, cfg.max_len)
    fast_batches = list(window_batches(windows, batch_size, rng=np.random.default_rng(seed)))
    n_fast = len(fast_batches)
    n_ref = math.ceil(len(windows) / batch_size)
    if steps is None:
        fast_idx = list(range(n_fast))
        ref_count = min(reference_steps or DEFAULT_REFERENCE_STEPS, n_ref)
    else:
        by_size = sorted(range(n_fast), key=lambda i: fast_batches[i][0].numel())
        fast_idx = [by_size[min(n_fast - 1, int((k + 0.5) * n_fast / steps))] for k in range(min(steps, n_fast))]
        ref_count = min(steps, n_ref)
    ref_batches = [
        _reference_batch(windows[k * batch_size : (k + 1) * batch_size], cfg.max_len) for k in range(ref_count)
    ]

    fast_model = fresh_model(ds.n_items, cfg, seed, dev).train()
    ref_model = fresh_model(ds.n_items, cfg, seed, dev).train()
    fast_opt = torch.optim.Adam(fast_model.parameters(), lr=ADAM_LR, weight_decay=ADAM_WEIGHT_DECAY)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=ADAM_LR, weight_decay=ADAM_WEIGHT_DECAY)
    machine = machine_info()
    # warm-up (not timed): allocator / kernel selection on small batches
    warm_h, warm_t = _reference_batch(windows[:32], cfg.max_len)
    train_step(fast_model, fast_opt, *(x.to(dev) for x in fast_batches[fast_idx[0]]))
    _reference_step(ref_model, ref_opt, warm_h.to(dev), warm_t.to(dev))

    fast_times: list[float] = []
    ref_times: list[float] = []
    for k in range(max(len(fast_idx), ref_count)):
        if k < len(fast_idx):
            h, t = (x.to(dev) for x in fast_batches[fast_idx[k]])
            fast_times.append(timed(lambda h=h, t=t: train_step(fast_model, fast_opt, h, t), dev))
        if k < ref_count:
            h, t = (x.to(dev) for x in ref_batches[k])
            ref_times.append(timed(lambda h=h, t=t: _reference_step(ref_model, ref_opt, h, t), dev))

    full_epoch = len(fast_idx) == n_fast
    epoch_s = sum(fast_times) * (1.0 if full_epoch else n_fast / len(fast_idx))
    reference_epoch_s = float(np.median(ref_times)) * n_ref
    tokens = [b[0].numel() for b in fast_batches]
    return {
        "benchmark": "train",
        "dataset": ds.name,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "windows": len(windows),
        "batch_size": batch_size,
        "epoch_s": sig(epoch_s),
        "reference_epoch_s": sig(reference_epoch_s),
        "speedup": sig(reference_epoch_s / epoch_s, 3),
        "steps_measured": {"fast": len(fast_times), "reference": len(ref_times)},
        "extrapolated": {"fast": not full_epoch, "reference": ref_count < n_ref},
        "fast": {
            "batches_per_epoch": n_fast,
            "positions_per_epoch": int(sum(tokens)),
            "real_positions_per_epoch": int(sum(int((b[1] != 0).sum()) for b in fast_batches)),
            "step_s": [round(x, 4) for x in fast_times],
        },
        "reference": {
            "batches_per_epoch": n_ref,
            "positions_per_epoch": len(windows) * cfg.max_len,
            "step_s": [round(x, 4) for x in ref_times],
        },
        "model": cfg.model_dump(),
        "device": str(dev),
        "machine": machine,
    }
