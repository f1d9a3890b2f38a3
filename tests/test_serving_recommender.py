"""Recommender and ReloadingRecommender (adrec_stream.serving.recommender) with tiny real models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from adrec_stream.data.events import build_vocabulary, chronological_split, item_counts, read_interactions
from adrec_stream.errors import CheckpointError
from adrec_stream.model import ModelConfig, build_model, load_checkpoint, save_checkpoint
from adrec_stream.serving.recommender import Recommendation, Recommender, ReloadingRecommender
from adrec_stream.serving.registry import ModelRegistry

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "events" / "ml-100k" / "u.data"
N_ITEMS = 12
VOCAB = [str(i) for i in range(N_ITEMS)]  # raw "0".."11" -> internal 1..12; raw "0" is an ordinary item


def tiny(kind: str = "sasrec", n_items: int = N_ITEMS, seed: int = 0, max_len: int = 8):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, hidden_size=16, max_len=max_len, num_heads=2, num_blocks=1, diffusion_steps=4,
                      deterministic_sampling=True)
    return build_model(n_items, cfg)


def save(path, model, vocab=VOCAB, meta=None) -> Path:
    return save_checkpoint(path, model, vocab=list(vocab), config={"test": True}, meta=meta)


@pytest.fixture
def ckpt_path(tmp_path) -> Path:
    counts = [0, 5, 1, 9, 0, 9, 2, 3, 3, 1, 0, 7, 4]  # index 0 = padding
    return save(tmp_path / "ck.pt", tiny(), meta={"item_counts": counts})


class Spy:
    """Wraps model.score, recording each history batch and optionally rewriting the scores."""

    def __init__(self, model, rewrite=None):
        self.inner = model.score
        self.calls: list[torch.Tensor] = []
        self.rewrite = rewrite

    def __call__(self, history, **kw):
        self.calls.append(history.clone())
        out = self.inner(history, **kw)
        return self.rewrite(out) if self.rewrite else out


def test_histories_are_mapped_filtered_truncated_and_left_padded(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path)
    spy = Spy(rec.model)
    rec.model.score = spy
    long = [str(i % N_ITEMS) for i in range(20)]  # 20 known items: only the last max_len = 8 are used
    rec.recommend([["5", "1000000000", "0", "7"], ["2"], long], k=3)
    assert len(spy.calls) == 1
    expected_long = [int(x) + 1 for x in long[-8:]]
    assert spy.calls[0].tolist() == [
        [0, 0, 0, 0, 0, 6, 1, 8],  # "5"->6, unknown 10^9 skipped, "0"->1, "7"->8
        [0, 0, 0, 0, 0, 0, 0, 3],
        expected_long,
    ]
    assert rec.to_indices(["x", "11", "y"]) == [12]


def test_top_k_matches_full_ranking_and_maps_back_to_raw_ids(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path)
    hist = [["3", "4", "5"], ["0"], ["11", "11", "2"]]
    out = rec.recommend(hist, k=4)
    model = load_checkpoint(ckpt_path).model
    for h, r in zip(hist, out):
        scores = model.score(torch.tensor([[int(x) + 1 for x in h]]))[0]
        vals, idx = torch.topk(scores, 4)
        assert r.items == [str(i - 1) for i in idx.tolist()]
        assert r.scores == pytest.approx(vals.tolist(), rel=1e-5, abs=1e-6)
        assert r.fallback is False and r.model_version is None
        assert r.scores == sorted(r.scores, reverse=True)


def test_padding_is_never_returned_even_if_the_model_scores_it_highest(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path)

    def boost_padding(scores):
        scores = scores.clone()
        scores[:, 0] = 1e9
        return scores

    rec.model.score = Spy(rec.model, boost_padding)
    out = rec.recommend([["1", "2"]], k=50)[0]  # k > n_items: clamped
    assert len(out.items) == N_ITEMS
    assert sorted(out.items, key=int) == VOCAB  # every real item once, nothing else
    assert all(math.isfinite(s) for s in out.scores)


def test_popularity_fallback_for_empty_or_unknown_histories(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path, version=7)
    spy = Spy(rec.model)
    rec.model.score = spy
    out = rec.recommend([[], ["999", "abc"], ["4"]], k=4)
    # counts per internal index 1..12: raw "2" and "4" (index 3, 5) have 9, then raw "10" (index 11) has 7, raw "0" 5
    assert out[0] == Recommendation(["2", "4", "10", "0"], [9.0, 9.0, 7.0, 5.0], True, 7)
    assert out[1] == out[0]
    assert out[2].fallback is False and out[2].model_version == 7
    assert len(spy.calls) == 1 and spy.calls[0].shape == (1, 1)  # only the user with a known item is scored


def test_uniform_fallback_without_item_counts(tmp_path):
    rec = Recommender.from_checkpoint(save(tmp_path / "ck.pt", tiny()))
    out = rec.recommend([[]], k=3)[0]
    assert out == Recommendation(["0", "1", "2"], [0.0, 0.0, 0.0], True, None)


def test_invalid_item_counts_refused(tmp_path):
    with pytest.raises(CheckpointError, match="item_counts"):
        Recommender.from_checkpoint(save(tmp_path / "a.pt", tiny(), meta={"item_counts": [1, 2, 3]}))
    bad = [0.0] * (N_ITEMS + 1)
    bad[3] = -1.0
    with pytest.raises(CheckpointError, match="non-negative"):
        Recommender.from_checkpoint(save(tmp_path / "b.pt", tiny(), meta={"item_counts": bad}))


def test_non_finite_model_scores_fall_back_per_row(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path)

    def nan_first_row(scores):
        scores = scores.clone()
        scores[0, 1:] = float("nan")
        return scores

    rec.model.score = Spy(rec.model, nan_first_row)
    out = rec.recommend([["1"], ["2"]], k=3)
    assert out[0].fallback is True and out[0].items == ["2", "4", "10"]
    assert out[1].fallback is False and all(math.isfinite(s) for s in out[1].scores)


def test_exclude_history(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path)
    hist = ["0", "1", "2", "3", "4", "5", "6", "7"]
    out = rec.recommend([hist], k=10, exclude_history=True)[0]
    assert sorted(out.items, key=int) == ["8", "9", "10", "11"]  # only 4 unseen items remain


def test_batching_gives_the_same_results(ckpt_path):
    hists = [[str((u * 7 + j) % N_ITEMS) for j in range(1 + u % 9)] for u in range(11)]
    whole = Recommender.from_checkpoint(ckpt_path).recommend(hists, k=5)
    small = Recommender.from_checkpoint(ckpt_path, batch_size=3)
    spy = Spy(small.model)
    small.model.score = spy
    chunked = small.recommend(hists, k=5)
    assert len(spy.calls) == 4  # ceil(11 / 3)
    for a, b in zip(whole, chunked):
        assert a.items == b.items
        assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-5)


def test_adrec_model_scores_are_finite(tmp_path):
    rec = Recommender.from_checkpoint(save(tmp_path / "ad.pt", tiny("adrec")))
    out = rec.recommend([["1", "2", "3"], ["11"]], k=5)
    for r in out:
        assert len(r.items) == 5 and len(set(r.items)) == 5 and not r.fallback
        assert all(math.isfinite(s) for s in r.scores) and "padding" not in r.items
    assert rec.recommend([["1", "2", "3"]], k=5)[0].items == out[0].items  # deterministic sampling


def test_argument_checks(ckpt_path):
    with pytest.raises(ValueError, match="max_len"):
        Recommender.from_checkpoint(ckpt_path, max_len=9)
    rec = Recommender.from_checkpoint(ckpt_path, max_len=2)
    spy = Spy(rec.model)
    rec.model.score = spy
    rec.recommend([["1", "2", "3"]], k=1)
    assert spy.calls[0].tolist() == [[3, 4]]
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend([["1"]], k=0)
    assert rec.recommend([], k=3) == []


def test_ml100k_vocab_and_popularity_fallback(tmp_path):
    """Checkpoint vocabulary from the real ML-100K training split (first 80% of events by time)."""
    train, _ = chronological_split(read_interactions(ML100K))
    vocab = build_vocabulary(train)
    counts = item_counts(train, vocab)
    path = save(tmp_path / "ml.pt", tiny(n_items=len(vocab)), vocab=vocab, meta={"item_counts": counts})
    rec = Recommender.from_checkpoint(path)
    fb = rec.recommend([["no-such-movie"]], k=5)[0]
    assert fb == Recommendation(["50", "181", "100", "294", "258"], [473.0, 423.0, 417.0, 396.0, 394.0], True, None)
    hist = [r.item_id for r in train if r.user_id == "1"]
    out = rec.recommend([hist], k=10)[0]
    assert not out.fallback and len(set(out.items)) == 10 and set(out.items) <= set(vocab)


# --------------------------------------------------------------------------- hot reload


def test_reloading_follows_registry_and_refuses_corrupt_versions(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    rr = ReloadingRecommender(reg, poll_s=0)
    assert rr.version is None
    assert rr.recommend([["1"]], k=3) == [Recommendation([], [], True, None)]

    good1 = save(tmp_path / "g1.pt", tiny(seed=1))
    assert reg.publish(good1) == 1
    assert rr.recommend([["1"]], k=3)[0].model_version == 1
    first = rr.recommend([["1", "2"]], k=3)[0]

    # v2: truncated copy of a valid checkpoint -> refused, v1 keeps serving
    data = good1.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    assert reg.publish(bad) == 2
    with capture_logs() as logs:
        out = rr.recommend([["1", "2"]], k=3)[0]
    assert out.model_version == 1 and out.items == first.items
    assert rr.refusals == 1
    refused = [e for e in logs if e["event"] == "model_version_refused"]
    assert len(refused) == 1 and refused[0]["log_level"] == "error"
    assert refused[0]["version"] == 2 and refused[0]["serving_version"] == 1
    assert "v000002" in refused[0]["error"]
    rr.recommend([["1"]], k=3)
    assert rr.refusals == 1  # not retried on every poll

    # v3: garbage bytes -> refused as well
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a torch file" * 10)
    assert reg.publish(junk) == 3
    assert rr.recommend([["1"]], k=3)[0].model_version == 1 and rr.refusals == 2

    # v4: a valid model with a different vocabulary -> swapped in
    good4 = save(tmp_path / "g4.pt", tiny(n_items=3, seed=4), vocab=["a", "b", "c"])
    assert reg.publish(good4) == 4
    out = rr.recommend([["a"]], k=5)[0]
    assert out.model_version == 4 and sorted(out.items) == ["a", "b", "c"]
    assert rr.reloads == 2

    # rollback through the pointer
    reg.set_latest(1)
    assert rr.recommend([["1"]], k=3)[0].model_version == 1


def test_poll_interval_limits_registry_checks(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.publish(save(tmp_path / "a.pt", tiny(seed=1)))
    rr = ReloadingRecommender(reg, poll_s=3600)
    assert rr.version == 1  # loaded at construction
    reg.publish(save(tmp_path / "b.pt", tiny(seed=2)))
    assert rr.recommend([["1"]], k=2)[0].model_version == 1  # not polled yet
    assert rr.check() is True
    assert rr.recommend([["1"]], k=2)[0].model_version == 2
    assert rr.check() is False  # nothing new


def test_duplicate_vocabulary_refused(tmp_path):
    path = save(tmp_path / "dup.pt", tiny(n_items=3), vocab=["a", "b", "a"])
    with pytest.raises(CheckpointError, match="duplicate raw item id 'a'"):
        Recommender.from_checkpoint(path)


def test_exclude_history_covers_items_older_than_the_model_window(ckpt_path):
    rec = Recommender.from_checkpoint(ckpt_path, max_len=2)
    out = rec.recommend([["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]], k=5, exclude_history=True)[0]
    assert sorted(out.items, key=int) == ["10", "11"]
