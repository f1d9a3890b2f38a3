"""``adrec-stream evaluate``: HR@k / NDCG@k of a checkpoint on a leave-one-out split (full ranking)."""

from __future__ import annotations

import argparse
import json
import time

from adrec_stream.argtypes import positive_int
from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import loo_histories
from adrec_stream.errors import ConfigError, DataFileError
from adrec_stream.evaluation.offline import evaluate_model
from adrec_stream.model import SequenceModel, load_checkpoint
from adrec_stream.runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate`` options."""
    parser.description = (
        "Evaluate a checkpoint with full ranking over all items, leave-one-out: val = target val[u] after "
        "train[u]; test = target test[u] after train[u]+val[u] (last max_len items). Metrics are "
        "averaged per user; items scored equal to the target count as a uniformly random tie-break would place "
        "them (the expected metric: a constant-score model gets HR@k = k/N)."
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (or file) written by `train`")
    parser.add_argument("--dataset", required=True, help="dataset.pkl (or its folder)")
    parser.add_argument("--split", default="test", choices=["test", "val"], help="default test")
    parser.add_argument("--json", action="store_true", help="print one JSON object (fractions in [0, 1])")
    parser.add_argument("--exclude-history", action="store_true", help="remove history items from the ranking")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=512, help="users per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion sampling noise")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N",
                        help="ADRec: reverse diffusion steps at inference, 1..T (default: the checkpoint's "
                             "model.sampling_steps, i.e. T = model.diffusion_steps); fewer than T visit the strided "
                             "subset floor(linspace(T-1, 0, N)) of the timesteps")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                        help="ADRec: start the reverse process from zeros and add no noise (--seed then plays no "
                             "part); --no-deterministic: sample with noise (default: the checkpoint's "
                             "model.deterministic_sampling, normally off)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def sampling_settings(
    model: SequenceModel, steps: int | None, deterministic: bool | None
) -> tuple[int | None, bool | None]:
    """The reverse-sampling settings an evaluation of ``model`` uses: (steps, deterministic).

    For ADRec: the requested values, or the model config's (``sampling_steps`` → T, ``deterministic_sampling``).
    For SASRec (no diffusion): (None, None).

    Raises:
        ConfigError: ``steps`` outside [1, T] for ADRec, or ``steps`` / ``deterministic`` given for SASRec.
    """
    cfg = model.cfg
    if cfg.kind != "adrec":
        if steps is not None or deterministic is not None:
            raise ConfigError(f"--steps and --deterministic apply to ADRec checkpoints only; this one is a "
                              f"{type(model).__name__} (no diffusion): drop them")
        return None, None
    total = cfg.diffusion_steps
    if steps is not None and not 1 <= steps <= total:
        raise ConfigError(f"--steps {steps} is outside 1..{total}: the checkpoint was trained with "
                          f"diffusion_steps T = {total}, and inference can visit at most T reverse steps")
    resolved_steps = steps if steps is not None else (cfg.sampling_steps or total)
    resolved_det = deterministic if deterministic is not None else cfg.deterministic_sampling
    return resolved_steps, bool(resolved_det)


def run(args: argparse.Namespace) -> int:
    """Print HR@5/10/20 and NDCG@5/10/20 (and n_users) of the checkpoint on the split, with the sampling settings
    (steps, deterministic, seed), the evaluation wall time and the users scored per second."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    ck = load_checkpoint(args.checkpoint, device=str(dev))
    steps, deterministic = sampling_settings(ck.model, args.steps, args.deterministic)
    ds = load_adrec_dataset(args.dataset)
    if ds.n_items > ck.model.n_items:
        raise DataFileError(
            f"{args.dataset} has {ds.n_items} items but the checkpoint {args.checkpoint} knows {ck.model.n_items}: "
            "evaluate on the dataset the checkpoint was trained on"
        )
    expected = ds.vocab()
    if list(ck.vocab[: len(expected)]) != expected:
        first = next(i for i, (a, b) in enumerate(zip(ck.vocab, expected)) if a != b)
        raise DataFileError(
            f"the checkpoint {args.checkpoint} does not number items like {args.dataset}: its item {first + 1} is "
            f"raw id {ck.vocab[first]!r}, the dataset's is {expected[first]!r} (a model trained on an event log, "
            "e.g. the demo's, has the log's raw ids); evaluate a checkpoint trained on this dataset.pkl "
            "(adrec-stream train --dataset ...)"
        )
    hists, targets = loo_histories(ds.train, ds.val, ds.test, args.split, ck.model.cfg.max_len)
    t0 = time.perf_counter()
    res: dict = evaluate_model(ck.model, hists, targets, exclude_history=args.exclude_history,
                               batch_size=args.batch_size, device=dev, seed=args.seed, steps=steps,
                               deterministic=deterministic)
    wall = time.perf_counter() - t0
    res.update(steps=steps, deterministic=deterministic, seed=args.seed, threads=torch.get_num_threads(),
               wall_s=round(wall, 3), users_per_s=round(res["n_users"] / wall, 1) if wall > 0 else None)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{ds.name} {args.split} ({res['n_users']} users, x100):")
        for k in ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"):
            print(f"  {k:8s} {100 * res[k]:7.2f}")
        if steps is not None:
            print(f"sampling: {steps} reverse steps, " + ("deterministic" if deterministic else f"noise seed {args.seed}"))
        print(f"{wall:.2f} s on {res['threads']} thread(s): {res['users_per_s']} users/s")
    return 0
