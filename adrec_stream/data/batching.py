"""Left-padded windows, leave-one-out histories and length-bucketed, padding-trimmed batches.

Conventions (shared with :mod:`adrec_stream.model`): item id 0 is padding; histories are
left-padded so the most recent item is in the last column; ``targets[b, i]`` is the item that
followed ``history[b, i]`` (0 where ``history`` is padding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def left_pad(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Stack sequences into a left-padded LongTensor.

    Args:
        seqs: B item-id lists; a list longer than ``length`` keeps its last ``length`` items.
        length: number of columns L; None = the longest sequence (at least 1).

    Returns:
        LongTensor (B, L), 0 = padding on the left.
    """
    if length is None:
        length = max([len(s) for s in seqs] + [1])
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for b, s in enumerate(seqs):
        tail = list(s)[-length:] if length > 0 else []
        if tail:
            out[b, length - len(tail):] = tail
    return torch.from_numpy(out)


def training_windows(seqs: Sequence[Sequence[int]], max_len: int, windows: str = "last") -> list[list[int]]:
    """Training windows of at most ``max_len + 1`` items per user.

    ``windows="last"``: one window per user, the last <= max_len + 1 items (paper Sec. 4 and the reference code:
    one sample per user; the older items of a longer sequence are never a training target).
    ``windows="all"``: the whole sequence, cut from its end into windows of max_len + 1 items that share one item
    with the next (each window's first item is history only), so every item after a user's first is the target of
    exactly one position; the last window is the "last" one, the earliest may be shorter (>= 2 items).

    A window ``w`` gives ``history = w[:-1]`` and ``targets = w[1:]``. Users with fewer than two
    items have no (history, next item) pair and are dropped.

    Raises:
        ValueError: ``windows`` is neither "last" nor "all".
    """
    if windows == "last":
        return [list(s[-(max_len + 1):]) for s in seqs if len(s) >= 2]
    if windows != "all":
        raise ValueError(f"windows must be 'last' or 'all', got {windows!r}")
    out = []
    for s in seqs:
        for end in range(len(s), 1, -max_len):
            out.append(list(s[max(0, end - max_len - 1):end]))
    return out


def loo_histories(
    train: Sequence[Sequence[int]], val: Sequence[Sequence[int]], test: Sequence[Sequence[int]],
    split: str, max_len: int,
) -> tuple[list[list[int]], list[int]]:
    """Leave-one-out evaluation inputs.

    ``split="val"``: history = last max_len items of train[u], target = val[u][0].
    ``split="test"``: history = last max_len items of train[u] + val[u], target = test[u][0].

    Raises:
        ValueError: unknown split name.
    """
    if split == "val":
        hists = [list(t[-max_len:]) for t in train]
        targets = [v[0] for v in val]
    elif split == "test":
        hists = [(list(t) + list(v))[-max_len:] for t, v in zip(train, val)]
        targets = [x[0] for x in test]
    else:
        raise ValueError(f"unknown split {split!r}; use 'val' or 'test'")
    return hists, targets


def window_batches(
    windows: Sequence[Sequence[int]], batch_size: int, *, shuffle: bool = True, bucket: bool = True,
    bucket_span: int = 32, rng: np.random.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (history, targets) batches trimmed to the longest real length in each batch.

    With ``bucket=True`` the (shuffled) windows are taken ``bucket_span`` batches at a time,
    sorted by length within that span, cut into batches, and the batch order is shuffled: batches
    then hold sequences of similar length, so trimming removes most padding (on the Amazon
    splits about 90% of a fixed L = 50 window is padding).

    Args:
        windows: item lists of length >= 2 (see :func:`training_windows`).
        batch_size: windows per batch (the last batch may be smaller).
        rng: numpy generator for shuffling (seeded by the caller for reproducibility).

    Yields:
        history, targets: LongTensor (B, l) each, l = longest window in the batch minus 1.
    """
    n = len(windows)
    rng = rng if rng is not None else np.random.default_rng()
    order = rng.permutation(n) if shuffle else np.arange(n)
    batches: list[np.ndarray] = []
    if bucket:
        lengths = np.fromiter((len(w) for w in windows), dtype=np.int64, count=n)
        span = batch_size * max(1, bucket_span)
        for start in range(0, n, span):
            chunk = order[start:start + span]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        if shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    for idx in batches:
        chunk = [windows[i] for i in idx]
        full = left_pad(chunk)
        yield full[:, :-1].contiguous(), _shifted_targets(full)


def _shifted_targets(full: torch.Tensor) -> torch.Tensor:
    """targets = window[1:], zeroed where the history position (window[:-1]) is padding."""
    hist, tgt = full[:, :-1], full[:, 1:]
    return torch.where(hist > 0, tgt, torch.zeros_like(tgt)).contiguous()
