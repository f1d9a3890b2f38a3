"""Left padding, leave-one-out histories, training windows and trimmed, length-bucketed batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import left_pad, loo_histories, training_windows, window_batches

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec"


def test_left_pad_keeps_the_most_recent_items() -> None:
    out = left_pad([[1, 2, 3], [4], []], length=2)
    assert out.tolist() == [[2, 3], [0, 4], [0, 0]]
    assert left_pad([[5, 6, 7], [8]]).tolist() == [[5, 6, 7], [0, 0, 8]]


def test_training_windows_take_last_l_plus_one_items() -> None:
    seqs = [list(range(1, 11)), [3], [4, 5]]
    assert training_windows(seqs, max_len=4) == [[6, 7, 8, 9, 10], [4, 5]]
    assert training_windows(seqs, max_len=4, windows="all") == [[6, 7, 8, 9, 10], [2, 3, 4, 5, 6], [1, 2], [4, 5]]
    assert training_windows([list(range(1, 10))], max_len=4, windows="all") == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]
    with pytest.raises(ValueError, match="'last' or 'all'"):
        training_windows(seqs, max_len=4, windows="every")


def test_all_windows_make_every_training_item_a_target_once_on_ml100k() -> None:
    ds = load_adrec_dataset(DATA / "ml-100k")
    last, every = training_windows(ds.train, 50), training_windows(ds.train, 50, windows="all")
    targets = sum(len(s) - 1 for s in ds.train)
    assert sum(len(w) - 1 for w in every) == targets == 51_599
    assert sum(len(w) - 1 for w in last) == 30_619  # one window per user: 59 % of the targets
    assert len(every) - len(last) == sum(-(-(len(s) - 1) // 50) - 1 for s in ds.train) > 0


def test_leave_one_out_histories() -> None:
    train, val, test = [[1, 2, 3, 4], [5]], [[6], [7]], [[8], [9]]
    assert loo_histories(train, val, test, "val", 3) == ([[2, 3, 4], [5]], [6, 7])
    assert loo_histories(train, val, test, "test", 3) == ([[3, 4, 6], [5, 7]], [8, 9])
    with pytest.raises(ValueError):
        loo_histories(train, val, test, "dev", 3)


def test_leave_one_out_on_real_ml100k() -> None:
    ds = load_adrec_dataset(DATA / "ml-100k" / "dataset.pkl")
    h, t = loo_histories(ds.train, ds.val, ds.test, "test", 50)
    assert len(h) == ds.n_users == len(t)
    assert h[0] == (ds.train[0] + ds.val[0])[-50:] and len(h[0]) == 50 and h[0][-1] == ds.val[0][0]
    assert t[0] == ds.test[0][0] == 699


@pytest.mark.parametrize("bucket", [True, False])
def test_batches_cover_every_window_once_with_shifted_targets(bucket: bool) -> None:
    rng = np.random.default_rng(0)
    windows = [list(rng.integers(1, 50, size=int(n))) for n in rng.integers(2, 12, size=37)]
    seen = []
    for hist, tgt in window_batches(windows, 8, bucket=bucket, bucket_span=2, rng=np.random.default_rng(1)):
        assert hist.shape == tgt.shape and hist.shape[0] <= 8
        lengths = (hist > 0).sum(1)
        assert int(lengths.max()) == hist.shape[1]  # trimmed to the longest real length
        assert bool(((hist == 0) == (tgt == 0)).all())  # targets only where history is real
        for row_h, row_t, n in zip(hist.tolist(), tgt.tolist(), lengths.tolist()):
            real = row_h[len(row_h) - n:] + [row_t[-1]]
            assert row_t[len(row_t) - n:] == real[1:]
            seen.append(tuple(real))
    assert sorted(seen) == sorted(tuple(int(x) for x in w) for w in windows)


def test_bucketing_removes_most_padding_on_beauty() -> None:
    ds = load_adrec_dataset(DATA / "beauty")
    windows = training_windows(ds.train, 50)

    def padding_fraction(bucket: bool) -> float:
        total = real = 0
        for hist, _ in window_batches(windows, 512, bucket=bucket, rng=np.random.default_rng(0)):
            total += hist.numel()
            real += int((hist > 0).sum())
        return 1 - real / total

    assert padding_fraction(False) > 0.85  # trimming alone: each batch holds a long sequence
    assert padding_fraction(True) < 0.2


def _batch_sets(windows: list[list[int]], batch_size: int, bucket: bool, rng: np.random.Generator) -> list[frozenset]:
    return [frozenset(tuple(r) for r in hist.tolist())
            for hist, _ in window_batches(windows, batch_size, bucket=bucket, rng=rng)]


def test_bucketing_fixes_the_batches_on_ml100k_and_plain_shuffling_does_not() -> None:
    """Why SASRec+ trains with ``bucket_by_length: false`` on ml-100k: a bucketing span covering the whole data set
    sorts it by length, so every epoch draws the same, length-homogeneous batches (with 938 windows and batch 512,
    (almost) the same two); plain shuffling (the reference's DataLoader) draws new batches each epoch."""
    ds = load_adrec_dataset(DATA / "ml-100k")
    windows = training_windows(ds.train, 50)
    rng = np.random.default_rng(0)
    first, second = _batch_sets(windows, 512, True, rng), _batch_sets(windows, 512, True, rng)
    assert all(max(len(a & b) / len(a) for b in second) > 0.98 for a in first)  # the same two batches
    first, second = _batch_sets(windows, 128, True, rng), _batch_sets(windows, 128, True, rng)
    overlap = [max(len(a & b) / len(a) for b in second) for a in first]
    assert sum(o > 0.85 for o in overlap) >= 3  # the short-history batches are (nearly) the same every epoch
    first, second = _batch_sets(windows, 128, False, rng), set(_batch_sets(windows, 128, False, rng))
    assert not any(b in second for b in first)
