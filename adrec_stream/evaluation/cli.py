"""``adrec-stream evaluate``: HR@k / NDCG@k of a checkpoint on a leave-one-out split (full ranking)."""

from __future__ import annotations

import argparse
import json

from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import loo_histories
from adrec_stream.errors import DataFileError
from adrec_stream.evaluation.offline import evaluate_model
from adrec_stream.model import load_checkpoint
from adrec_stream.runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate`` options."""
    parser.description = (
        "Evaluate a checkpoint with full ranking over all items, leave-one-out: val = target val[u] after "
        "train[u]; test = target test[u] after train[u]+val[u] (last max_len items). Metrics are "
        "averaged per user; rank = 1 + number of items scored strictly higher than the target."
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (or file) written by `train`")
    parser.add_argument("--dataset", required=True, help="dataset.pkl (or its folder)")
    parser.add_argument("--split", default="test", choices=["test", "val"], help="default test")
    parser.add_argument("--json", action="store_true", help="print one JSON object (fractions in [0, 1])")
    parser.add_argument("--exclude-history", action="store_true", help="remove history items from the ranking")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=512, help="users per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion sampling noise")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    """Print HR@5/10/20 and NDCG@5/10/20 (and n_users) of the checkpoint on the split."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    ck = load_checkpoint(args.checkpoint, device=str(dev))
    ds = load_adrec_dataset(args.dataset)
    if ds.n_items > ck.model.n_items:
        raise DataFileError(
            f"{args.dataset} has {ds.n_items} items but the checkpoint {args.checkpoint} knows {ck.model.n_items}: "
            "evaluate on the dataset the checkpoint was trained on"
        )
    hists, targets = loo_histories(ds.train, ds.val, ds.test, args.split, ck.model.cfg.max_len)
    res = evaluate_model(ck.model, hists, targets, exclude_history=args.exclude_history,
                         batch_size=args.batch_size, device=dev, seed=args.seed)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{ds.name} {args.split} ({res['n_users']} users, x100):")
        for k in ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"):
            print(f"  {k:8s} {100 * res[k]:7.2f}")
    return 0
