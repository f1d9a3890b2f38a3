"""Model-free statistics of the validation and test steps of a leave-one-out split.

They answer "is the test step harder than the validation step on this split?" without any trained
model, for every model trained on ``train[u]`` only (the paper's protocol, Sec. 5.1):

- ``pop_HR@k`` / ``pop_NDCG@k``: a popularity ranking (item counts in the training sequences, padding never
  ranked) evaluated on the step's targets, full ranking, averaged per user; items with the target's count are
  tied with it and count by the project's tie rule (:mod:`adrec_stream.evaluation.metrics`: the expected
  metric under a uniformly random tie-break);
- ``cold_target``: share of targets that never occur in the training sequences (their embeddings get
  no training signal as targets);
- ``seen_transition``: share of users whose (last history item → target) pair occurs as consecutive
  items somewhere in the training sequences (what a sequential model can learn directly);
- ``mean_history``: mean history length (items before the target, all of them, not cut to L).

All shares are fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence

import numpy as np

from adrec_stream.data.adrec_pkl import AdrecDataset, load_adrec_dataset
from adrec_stream.data.batching import loo_histories
from adrec_stream.evaluation.metrics import DEFAULT_KS, summarize, tie_metrics


def popularity_rank_counts(counts: Sequence[int], targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(higher, ties)`` of each target under a popularity ranking of items 1..N (inputs of
    :func:`~adrec_stream.evaluation.metrics.tie_metrics`).

    Args:
        counts: interaction count per item id, length N+1 (index 0 = padding, never ranked).
        targets: target item ids (1..N).

    Returns:
        Two int64 arrays (len(targets),): the number of items with a strictly higher count, and the number of
        OTHER items with the same count as the target.
    """
    c = np.asarray(counts, dtype=np.int64)
    ranked = np.sort(c[1:])
    t = c[np.asarray(targets, dtype=np.int64)]
    below_or_equal = np.searchsorted(ranked, t, side="right")
    below = np.searchsorted(ranked, t, side="left")
    return (len(ranked) - below_or_equal).astype(np.int64), (below_or_equal - below - 1).astype(np.int64)


def split_statistics(ds: AdrecDataset, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """The statistics above for the ``val`` step (history ``train[u]``) and the ``test`` step (history
    ``train[u] + val[u]``).

    Args:
        ds: a loaded split (:func:`~adrec_stream.data.adrec_pkl.load_adrec_dataset`).
        ks: cut-offs of the popularity metrics.

    Returns:
        {"val": {...}, "test": {...}}, each with ``pop_HR@k``, ``pop_NDCG@k`` (k in ``ks``),
        ``cold_target``, ``seen_transition``, ``mean_history`` and ``n_users``.
    """
    counts = ds.item_counts()
    pairs = Counter((a, b) for seq in ds.train for a, b in zip(seq, seq[1:]))
    whole = max(len(seq) for seq in ds.train) + 1  # a window no history exceeds: histories are not cut
    out: dict[str, dict[str, float]] = {}
    for name in ("val", "test"):
        hists, targets = loo_histories(ds.train, ds.val, ds.test, name, whole)
        higher, ties = popularity_rank_counts(counts, targets)
        stats = {f"pop_{k}": float(v) for k, v in summarize(tie_metrics(higher, ties, ks)).items()}
        stats["cold_target"] = float(np.mean([counts[t] == 0 for t in targets]))
        stats["seen_transition"] = float(np.mean([bool(h) and pairs[(h[-1], t)] > 0 for h, t in zip(hists, targets)]))
        stats["mean_history"] = float(np.mean([len(h) for h in hists]))
        stats["n_users"] = len(targets)
        out[name] = stats
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``split-stats`` options."""
    parser.description = (
        "Model-free statistics of the val and test steps of a leave-one-out dataset.pkl: popularity HR/NDCG@k "
        "(counts from the training sequences), share of cold targets, share of (last item -> target) "
        "transitions seen in training, mean history length. Shows whether the test step is harder than the "
        "validation step for any model trained on train[u]."
    )
    parser.add_argument("--dataset", required=True, help="dataset.pkl (or its folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (fractions in [0, 1])")


def run(args: argparse.Namespace) -> int:
    """Print the statistics of both steps (a table ×100, or JSON with fractions)."""
    ds = load_adrec_dataset(args.dataset)
    stats = split_statistics(ds)
    if args.json:
        print(json.dumps({"dataset": ds.name, "n_items": ds.n_items, **stats}))
        return 0
    print(f"{ds.name}: {ds.n_users} users, {ds.n_items} items (x100 except mean_history)")
    print(f"  {'':18s} {'val':>8s} {'test':>8s}")
    for key in stats["val"]:
        if key == "n_users":
            continue
        scale = 1.0 if key == "mean_history" else 100.0
        print(f"  {key:18s} {scale * stats['val'][key]:8.2f} {scale * stats['test'][key]:8.2f}")
    return 0
