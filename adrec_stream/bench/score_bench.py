"""Scoring-speed benchmark: milliseconds per user of ADRec next-item scoring (full ranking, T reverse steps).

* fast path: users in batches (their test histories, left-padded to L = 50); inside ``score`` rows are grouped by
  history length and trimmed, the CAM and the denoiser's history prefix run once (per-layer key/value cache), then
  T one-token steps.
* reference-equivalent path: one user at a time (batch 1), full L = 50 window, and at each of the T steps the
  denoiser input of the whole sequence rebuilt (time MLP at every position) and the whole sequence re-run through
  the denoiser (``score(..., use_cache=False)``), as the reference code does.

The two sides are interleaved at batch granularity (one fast batch, then a share of the reference users, ...) so
that load from other processes hits both alike; this is repeated for ``rounds`` rounds (default 5). ``speedup`` is the
median of the per-round ratios (each ratio compares the two sides under the same load), ``per_user_ms`` and
``reference_per_user_ms`` the median round of each side, so one load spike does not decide the figure. The fast path is
also checked against the reference path in deterministic mode on a few users (``max_abs_score_diff``).

:func:`batch_sweep` gives ``recs_per_s`` (users scored per second, full ranking) per batch size for the same model,
for a freshly initialised model over a synthetic 100,000-item table, and for a SASRec+ forward of the same size
(the CAM alone plus the item-table matmul: the practical upper bound of this model family), side by side,
interleaved per round, median of rounds.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from adrec_stream.bench.common import fresh_model, machine_info, sig, timed
from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import left_pad, loo_histories
from adrec_stream.model import ModelConfig, load_checkpoint

ROUNDS = 5
CHECK_USERS = 8
#: batch sizes of :func:`batch_sweep` and the item-table size of its synthetic model
SWEEP_BATCH_SIZES = (1, 8, 64, 256)
SYNTHETIC_ITEMS = 100_000
#: seconds of scoring per batch size and model in each sweep round (at least one batch)
SWEEP_SECONDS = 1.0


def _recs_per_s(model: torch.nn.Module, hists: list[list[int]], batch: int, dev: torch.device, steps: int | None,
                gen: torch.Generator, seconds: float) -> float:
    """Users per second of ``model.score`` on consecutive batches of ``batch`` histories for ~``seconds``."""
    width = model.cfg.max_len
    n = done = 0
    total = 0.0
    with torch.inference_mode():
        while total < seconds or done == 0:
            hs = [hists[(n + i) % len(hists)] for i in range(batch)]
            n += batch
            total += timed(lambda hs=hs: model.score(left_pad(hs, width).to(dev), steps=steps, generator=gen), dev)
            done += batch
    return done / total


def batch_sweep(model: torch.nn.Module, hists: list[list[int]], n_items: int, *, dev: torch.device, seed: int,
                steps: int | None = None, rounds: int = 3, batch_sizes: tuple[int, ...] = SWEEP_BATCH_SIZES,
                seconds: float = SWEEP_SECONDS, synthetic_items: int = SYNTHETIC_ITEMS) -> dict[str, Any]:
    """``recs_per_s`` per batch size for ``model``, a fresh ADRec over a synthetic ``SYNTHETIC_ITEMS``-item table and
    a SASRec+ of the same size as ``model`` (module docstring).

    Args:
        model: the ADRec model measured (trained or fresh), in eval mode.
        hists: item-index histories (ids < n_items + 1).
        steps: reverse steps of the ADRec models (None = their T).
        seconds: scoring time per (round, batch size, model); synthetic_items: the synthetic table's size.

    Returns:
        ``{"batch_sizes", "adrec": {B: recs_per_s}, "adrec_100k_items": {...}, "sasrec": {...},
        "adrec_over_sasrec": {B: ratio}, "steps"}``.
    """
    gen = torch.Generator(device=dev).manual_seed(seed)
    big = fresh_model(synthetic_items, model.cfg, seed, dev).eval()
    sas = fresh_model(n_items, model.cfg.model_copy(update={"kind": "sasrec"}), seed, dev).eval()
    models = {"adrec": model, "adrec_100k_items": big, "sasrec": sas}
    runs: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batch_sizes} for k in models}
    for _ in range(rounds):
        for b in batch_sizes:
            for name, m in models.items():
                runs[name][b].append(_recs_per_s(m, hists, b, dev, steps if name != "sasrec" else None, gen, seconds))
    med = {name: {b: sig(statistics.median(v)) for b, v in per.items()} for name, per in runs.items()}
    return {"batch_sizes": list(batch_sizes), **med, "synthetic_items": synthetic_items,
            "steps": steps or model.cfg.sampling_steps or model.cfg.diffusion_steps, "rounds": rounds,
            "adrec_over_sasrec": {b: sig(med["adrec"][b] / med["sasrec"][b], 3) for b in batch_sizes}}


def bench_score(
    dataset: str | Path,
    *,
    users: int = 2000,
    reference_users: int = 30,
    batch_size: int = 1024,
    cfg: ModelConfig | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 2025,
    device: str | torch.device = "cpu",
    rounds: int = ROUNDS,
    sweep: bool = True,
    steps: int | None = None,
) -> dict[str, Any]:
    """Measure per-user scoring time on the test histories of ``dataset``.

    Args:
        users: users scored by the fast path per round (the first ``users`` of the split).
        reference_users: users scored one by one by the reference path per round (it is ~100× slower).
        batch_size: users per fast-path batch.
        cfg: model config for a freshly initialised model (default :class:`ModelConfig`); ignored with ``checkpoint``.
        checkpoint: optional trained checkpoint to time instead (speed does not depend on the weights).
        seed: weight-init and sampling-noise seed.
        device: torch device.
        rounds: interleaved measurement rounds (>= 1).
        sweep: also run :func:`batch_sweep` (``recs_per_s`` per batch size; key ``sweep``).
        steps: reverse steps of the sweep's ADRec models (None = T); the speedup is always measured at T.

    Returns:
        JSON-ready dict with ``per_user_ms``, ``reference_per_user_ms``, ``speedup``, ``sweep`` and details.

    Raises:
        DataFileError / CheckpointError: unreadable inputs. ValueError: users, reference_users or rounds < 1.
    """
    if users < 1 or reference_users < 1 or rounds < 1:
        raise ValueError(f"users, reference_users and rounds must be >= 1, got {users}, {reference_users}, {rounds}")
    dev = torch.device(device)
    ds = load_adrec_dataset(dataset)
    if checkpoint is not None:
        model = load_checkpoint(checkpoint, device=str(dev)).model
    else:
        model = fresh_model(ds.n_items, cfg or ModelConfig(), seed, dev)
    model.eval()
    width = model.cfg.max_len
    hists, _ = loo_histories(ds.train, ds.val, ds.test, "test", width)
    fast_hists = hists[:users]
    ref_hists = hists[:reference_users]
    gen = torch.Generator(device=dev).manual_seed(seed)
    machine = machine_info()

    fast_batches = [fast_hists[i : i + batch_size] for i in range(0, len(fast_hists), batch_size)]
    per_batch = -(-len(ref_hists) // len(fast_batches))  # reference users timed after each fast batch
    ref_chunks = [ref_hists[i : i + per_batch] for i in range(0, len(ref_hists), per_batch)]

    def fast_batch(hs: list[list[int]]) -> None:
        model.score(left_pad(hs, width).to(dev), generator=gen)

    def reference_users(hs: list[list[int]]) -> None:
        for h in hs:
            model.score(left_pad([h], width).to(dev), generator=gen, use_cache=False)

    fast_batch(fast_hists[:8])  # warm-up, not timed
    reference_users(ref_hists[:1])
    fast_s, ref_s = [], []
    for _ in range(rounds):
        fast_t = ref_t = 0.0
        for k, hs in enumerate(fast_batches):  # interleaved at batch granularity: both sides see the same load
            fast_t += timed(lambda hs=hs: fast_batch(hs), dev)
            if k < len(ref_chunks):
                ref_t += timed(lambda k=k: reference_users(ref_chunks[k]), dev)
        fast_s.append(fast_t)
        ref_s.append(ref_t)
    per_user_ms = 1000 * statistics.median(fast_s) / len(fast_hists)
    reference_per_user_ms = 1000 * statistics.median(ref_s) / len(ref_hists)
    round_ratios = [(r / len(ref_hists)) / (f / len(fast_hists)) for f, r in zip(fast_s, ref_s, strict=True)]

    check = ref_hists[:CHECK_USERS]
    fast_scores = model.score(left_pad(check, width).to(dev), deterministic=True)
    ref_scores = torch.cat(
        [model.score(left_pad([h], width).to(dev), deterministic=True, use_cache=False) for h in check]
    )
    diff = (fast_scores[:, 1:] - ref_scores[:, 1:]).abs().max().item()
    swept = batch_sweep(model, hists, ds.n_items, dev=dev, seed=seed, steps=steps) if sweep else None
    return {
        "sweep": swept,
        "benchmark": "score",
        "dataset": ds.name,
        "n_items": ds.n_items,
        "per_user_ms": sig(per_user_ms),
        "reference_per_user_ms": sig(reference_per_user_ms),
        "speedup": sig(statistics.median(round_ratios), 3),
        "speedup_per_round": [sig(x, 3) for x in round_ratios],
        "users_measured": len(fast_hists),
        "reference_users_measured": len(ref_hists),
        "rounds": rounds,
        "round_s": {"fast": [round(x, 3) for x in fast_s], "reference": [round(x, 3) for x in ref_s]},
        "batch_size": batch_size,
        "sampling_steps": model.cfg.sampling_steps or model.cfg.diffusion_steps,
        "max_abs_score_diff": diff,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "model": model.cfg.model_dump(),
        "device": str(dev),
        "machine": machine,
    }
