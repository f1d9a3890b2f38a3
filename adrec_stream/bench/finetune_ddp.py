"""Distributed vs single-process fine-tune round on the same window of logged clicks (the equivalence check of
``finetune.distributed``, docs/incremental.md "Several devices or hosts").

Both rounds are the fine-tune worker's own (:meth:`~adrec_stream.incremental.worker.FinetuneWorker.run_once`),
each on its own registry in a temporary folder with the same serving version 1 (a freshly initialised ADRec over
the items of the log's first 80 %, seeded), the same fresh clicks (the ``window_events`` clicks right after the
80 % cut, turned into the sequence updates the ingest worker would publish) and the same ``finetune`` settings;
the second round has ``finetune.distributed.nproc_per_node = nproc`` (a torchrun job, gloo on the CPU). The two
published version-2 models are then compared:

- ``score_max_abs_diff``: the largest absolute difference of the scores both give, with deterministic sampling,
  over all items for a fixed set of users (the histories of the held-out clicks); ``score_scale`` is the largest
  absolute score (of the single-process model) for scale;
- ``param_max_abs_diff``: the largest absolute difference of any weight (``param_max_abs_diff_name``: whose);
- ``heldout_ndcg10_diff``: the difference of the candidates' held-out NDCG@10 in the two rounds' records.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

#: the tiny ADRec of the comparison (seconds per round on 2 cores)
TINY_MODEL = {"hidden_size": 16, "max_len": 10, "num_heads": 2, "num_blocks": 1, "diffusion_steps": 4}


def _round(tmp: Path, name: str, serving: Path, updates: list, overrides: dict[str, Any]) -> dict[str, Any]:
    from adrec_stream.incremental.worker import FinetuneWorker  # noqa: PLC0415
    from adrec_stream.model.checkpoint import load_checkpoint  # noqa: PLC0415
    from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415

    cfg = load_stream_config(None, {**overrides, "registry_dir": str(tmp / name / "registry"),
                                    "state_dir": str(tmp / name / "state")})
    worker = FinetuneWorker(cfg, device="cpu")
    worker.registry.publish(serving, meta={"source": "finetune_ddp comparison"})
    worker.tracker.add(updates)
    record = worker.run_once()
    found = worker.registry.latest()
    model = load_checkpoint(found[1], device="cpu").model if found and found[0] == 2 else None
    return {"record": record, "model": model}


def compare_rounds(data_path: str | Path, *, window_events: int = 600, nproc: int = 2, seed: int = 2025,
                   model_overrides: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                   second_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the single-process and the ``nproc``-rank round on the same window and compare (module docstring).

    Args:
        data_path: an interaction log (``../shared/data/events/ml-100k/u.data``).
        window_events: fresh clicks of the round, right after the first 80 % of the log.
        nproc: ranks of the distributed round (one host, gloo); 1 = the second round runs in process too (with
            ``second_overrides``, e.g. another ``finetune.seed``: the single-process seed-to-seed difference).
        seed: the serving model's init seed and ``finetune.seed`` (shuffling, new rows, dropout, diffusion noise).
        model_overrides: changes to :data:`TINY_MODEL` (e.g. ``{"dropout": 0.0}``).
        overrides: dotted stream-config overrides for both rounds (``{"finetune.max_steps": 10}``).
        second_overrides: further overrides of the second round only.

    Returns:
        JSON-ready dict: ``score_max_abs_diff``, ``score_scale``, ``param_max_abs_diff``, ``heldout_ndcg10_diff``,
        ``users_scored``, and per round (``single``, ``distributed``) its ``status``, ``steps``, ``loss_before``,
        ``loss_after``, held-out NDCG@10 of the candidate, ``round_s`` and ``world_size``.

    Raises:
        RuntimeError: a round did not publish (both must, for a comparison: use a ``finetune.tolerance`` of 1).
    """
    from adrec_stream.data.batching import left_pad  # noqa: PLC0415
    from adrec_stream.data.events import build_vocabulary, chronological_split, read_interactions  # noqa: PLC0415
    from adrec_stream.incremental.updates import updates_from_clicks  # noqa: PLC0415
    from adrec_stream.model import ModelConfig, build_model  # noqa: PLC0415
    from adrec_stream.model.checkpoint import save_checkpoint  # noqa: PLC0415
    from adrec_stream.state.vocab import Vocabulary  # noqa: PLC0415

    before, after = chronological_split(read_interactions(data_path), 0.8)
    history: dict[str, list[str]] = {}
    for x in before:
        history.setdefault(x.user_id, []).append(x.item_id)
    vocab = build_vocabulary(before)
    mcfg = ModelConfig(**{**TINY_MODEL, **(model_overrides or {})})
    base = {"finetune.seed": seed, "finetune.device": "cpu", "finetune.threads": 1, "finetune.nice": 0,
            "finetune.tolerance": 1.0, "finetune.max_window_events": window_events, **(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="adrec-finetune-ddp-") as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(seed)
        serving = save_checkpoint(tmp / "serving" / "model.pt", build_model(len(vocab), mcfg).eval(), vocab=vocab,
                                  config={"model": mcfg.model_dump(mode="json")}, meta={})
        window_len = int(base.get("window", 20))
        updates = updates_from_clicks([(x.user_id, x.item_id, x.ts) for x in after[:window_events]],
                                      window=window_len, n_partitions=2, history=history)
        single = _round(tmp, "single", serving, updates, base)
        second = {**base, **(second_overrides or {})}
        if nproc > 1:
            second.update({"finetune.distributed.nproc_per_node": nproc, "finetune.distributed.backend": "gloo"})
        multi = _round(tmp, "second", serving, updates, second)
    if single["model"] is None or multi["model"] is None:
        raise RuntimeError(f"a round did not publish: single {single['record'].get('status')} "
                           f"({single['record'].get('reason')}), distributed {multi['record'].get('status')} "
                           f"({multi['record'].get('reason')}, {multi['record'].get('error')})")
    a, b = single["model"], multi["model"]
    # fixed users: every user of the window, with their newest window of items the serving vocabulary knows
    known = Vocabulary(vocab)
    latest = {u.user_id: u.items for u in updates}
    hist_ids = [h for h in (known.encode(items)[-mcfg.max_len:] for _, items in sorted(latest.items()))
                if h]
    hist = left_pad(hist_ids, mcfg.max_len)
    sa = a.score(hist, deterministic=True)[:, 1:]
    sb = b.score(hist, deterministic=True)[:, 1:]
    pa, pb = a.state_dict(), b.state_dict()
    diffs = {k: float((pa[k].float() - pb[k].float()).abs().max()) for k in pa}

    def info(r: dict[str, Any]) -> dict[str, Any]:
        rec = r["record"]
        return {k: rec.get(k) for k in ("status", "steps", "loss_before", "loss_after", "heldout_NDCG@10_candidate",
                                        "round_s", "world_size")}

    return {
        "score_max_abs_diff": float((sa - sb).abs().max()),
        "score_scale": float(sa.abs().max()),
        "param_max_abs_diff": max(diffs.values()),
        "param_max_abs_diff_name": max(diffs, key=diffs.get),
        "heldout_ndcg10_diff": abs(float(single["record"]["heldout_NDCG@10_candidate"])
                                   - float(multi["record"]["heldout_NDCG@10_candidate"])),
        "users_scored": len(hist_ids), "window_events": window_events, "nproc": nproc, "seed": seed,
        "model": mcfg.model_dump(), "single": info(single), "distributed": info(multi),
    }
