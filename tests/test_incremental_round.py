"""The fine-tune round without a broker: update parsing, fresh/pool bookkeeping, windows, vocabulary growth,
stage-3 training with its guards, and the worker's round/publish path on a real registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adrec_stream.errors import ConfigError
from adrec_stream.incremental.config import FinetuneConfig
from adrec_stream.incremental.round import build_window, grow_vocabulary, holdout_size, run_round, train_window
from adrec_stream.incremental.updates import (
    BadUpdateError,
    SequenceUpdateRecord,
    UpdateTracker,
    parse_update,
    updates_from_clicks,
)
from adrec_stream.model import ModelConfig, build_model
from adrec_stream.state.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MCFG = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
VOCAB = [str(i) for i in range(1, 41)]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(len(VOCAB), MCFG).eval()


def _cycle_clicks(n_users: int, n_clicks: int, n_items: int = 40) -> list[tuple[str, str, float]]:
    """Every user walks the items in a cycle: the next item is a deterministic function of the last one."""
    return [(f"u{u}", str(1 + (u + k) % n_items), float(k * 100 + u)) for k in range(n_clicks) for u in range(n_users)]


def test_parse_update_reads_the_ingest_workers_record_and_refuses_bad_ones():
    u = parse_update(b'{"user_id": 7, "items": ["3", 5], "event_id": "e1", "event_ts": 10, "ingest_ts": 11.5}', 1, 42)
    assert u == SequenceUpdateRecord("7", ("3", "5"), 1, 42, 10.0, 11.5, "e1")
    assert u.clicked == "5"
    for bad, why in [(b"{", "not JSON"), (b"[1]", "not a JSON object"), (b'{"items": ["1"]}', "no user_id"),
                     (b'{"user_id": "a", "items": []}', "non-empty list"), (None, "tombstone")]:
        with pytest.raises(BadUpdateError, match=why):
            parse_update(bad, 0, 0)


def test_item_ids_of_updates_follow_the_click_rules():
    """A fresh user's junk record ({"items": [1, null, {"a": 1}]}) was accepted as items '1', 'None', "{'a': 1}",
    which then got rows in a published vocabulary: item ids are now checked by the click decoder's rule."""
    junk = b'{"user_id": "3", "items": [1, null, {"a": 1}]}'
    with pytest.raises(BadUpdateError, match="items: bad_item_id: null"):
        parse_update(junk, 0, 0)
    for items, why in [(b'[1, true]', "boolean"), (b'[1, 2.5]', "float"), (b'["12a"]', "not an integer"),
                       (b'[[1]]', "list")]:
        with pytest.raises(BadUpdateError, match=why):
            parse_update(b'{"user_id": "3", "items": ' + items + b"}", 0, 0)
    assert parse_update(b'{"user_id": "3", "items": [7, "007", "12"]}', 0, 0).items == ("7", "7", "12")
    assert parse_update(b'{"user_id": "3", "items": ["12a", 5]}', 0, 0, item_id_type="str").items == ("12a", "5")
    with pytest.raises(BadUpdateError, match="bad_item_id"):
        parse_update(b'{"user_id": "3", "items": ["a", null]}', 0, 0, item_id_type="str")


def test_updates_from_clicks_match_what_ingest_publishes():
    ups = updates_from_clicks([("a", "1", 1.0), ("b", "2", 2.0), ("a", "3", 3.0), ("a", "4", 4.0)], window=2,
                              n_partitions=2, history={"a": ["9"]})
    assert [u.items for u in ups] == [("9", "1"), ("2",), ("1", "3"), ("3", "4")]
    assert ups[0].partition == ups[2].partition == ups[3].partition
    assert [u.offset for u in ups if u.partition == ups[0].partition] == list(range(3 + (ups[1].partition == ups[0].partition)))


def test_tracker_fresh_and_pool_follow_the_cut():
    ups = updates_from_clicks([("a", "1", 1), ("b", "2", 2), ("a", "3", 3)], window=5, n_partitions=1)
    t = UpdateTracker(max_recent=10)
    t.add(ups)
    assert [u.offset for u in t.fresh({})] == [0, 1, 2]
    assert [u.offset for u in t.fresh({0: 1})] == [2]
    # a's newest click (offset 2) is fresh under cut 1: only b is in the replay pool
    assert [u.user_id for u in t.pool({0: 1})] == ["b"]
    assert [u.user_id for u in t.pool({0: 2})] == ["a", "b"]
    small = UpdateTracker(max_recent=2)
    small.add(ups)
    assert [u.offset for u in small.fresh({})] == [1, 2]  # the window keeps the newest clicks
    assert small.latest["a"].items == ("1", "3")


def test_window_holds_out_the_newest_clicks_and_never_leaks_them():
    cfg = FinetuneConfig(holdout_fraction=0.25, holdout_min_events=1, min_round_events=4, replay_ratio=1.0)
    clicks = [("a", "1", 1), ("b", "2", 2), ("a", "3", 3), ("c", "4", 4), ("a", "5", 5), ("c", "6", 6),
              ("d", "7", 7), ("b", "8", 8)]
    ups = updates_from_clicks(clicks, window=10, n_partitions=1)
    pool = [SequenceUpdateRecord("old", ("1", "2", "3"), 0, -1, 0.0, None, None)]
    w = build_window(ups, pool, {}, cfg, np.random.default_rng(0), max_len=10)
    assert holdout_size(8, cfg) == 2
    assert [u.event_id for u in w.holdout] == ["6", "7"]  # the newest 2 clicks
    assert w.cut == {0: 5}
    # a, b, c trained as of their last TRAINING click; d only clicked in the held-out part: not trained
    assert sorted(w.sequences[: w.fresh_users]) == [["1", "3", "5"], ["2"], ["4", "6"]]
    assert w.fresh_users == 3 and w.replay_users == 1 and w.sequences[-1] == ["1", "2", "3"]
    assert w.bounds()["offsets"] == {"0": [0, 5]} and w.bounds()["last_event_ts"] == 6.0


def test_a_user_with_more_than_max_len_fresh_clicks_gives_one_window_per_max_len_clicks():
    cfg = FinetuneConfig(holdout_min_events=1, holdout_fraction=0.01, min_round_events=4, replay_ratio=0)
    ups = updates_from_clicks([("a", str(i), i) for i in range(1, 26)], window=100, n_partitions=1)
    w = build_window(ups, [], {}, cfg, np.random.default_rng(0), max_len=10)
    assert len(w.train) == 24
    assert [s[-1] for s in w.sequences] == ["4", "14", "24"]  # windows end at clicks 24, 14, 4
    targets = set()
    for s in w.sequences:
        targets.update(s[-11:][1:])  # a model window: the last max_len + 1 items, every item after the first
    assert targets == {str(i) for i in range(2, 25)}


def test_grow_vocabulary_appends_and_starts_new_rows_at_their_context():
    model = _model()
    old = model.item_emb.weight.detach().clone()
    vocab = Vocabulary(VOCAB)
    added = grow_vocabulary(model, vocab, [["1", "41", "2"], ["3", "41"], ["42"]], "context_mean",
                            torch.Generator().manual_seed(0))
    assert added == ["41", "42"] and len(vocab) == 42 and model.n_items == 42
    table = model.item_emb.weight.detach()
    assert torch.equal(table[:41], old)  # old rows (and padding) untouched
    noise = 0.1 * float(old[1:].std(dim=0).mean())
    assert torch.allclose(table[41], (old[1] + old[3]) / 2, atol=6 * noise)  # after items 1 and 3
    assert torch.allclose(table[42], old[1:].mean(dim=0), atol=6 * noise)  # no known context: the table mean
    assert not torch.allclose(table[41], (old[1] + old[3]) / 2, atol=1e-7)  # but not exactly (noise)
    with pytest.raises(ValueError, match="new_item_init"):
        grow_vocabulary(model, vocab, [["43"]], "zeros")


def test_round_learns_a_deterministic_stream_and_keeps_the_serving_model():
    serving = _model()
    before = {k: v.clone() for k, v in serving.state_dict().items()}
    cfg = FinetuneConfig(min_round_events=20, epochs=30, max_steps=300, max_seconds=60, batch_size=32, lr=5e-3,
                         holdout_fraction=0.1)
    ups = updates_from_clicks(_cycle_clicks(30, 14, n_items=45), window=20, n_partitions=2)
    w = build_window(ups, [], {}, cfg, np.random.default_rng(0), max_len=10)
    o = run_round(serving, VOCAB, w, cfg, torch.device("cpu"))
    assert o.accepted and o.reason == "passed"
    assert o.new_items and all(int(i) > 40 for i in o.new_items) and o.candidate.n_items == 40 + len(o.new_items)
    assert o.loss_after < o.loss_before
    assert o.heldout_candidate["NDCG@10"] > o.heldout_serving["NDCG@10"] + 0.3  # it learned next = last + 1
    assert o.heldout_candidate["judged"] == len(w.holdout) == 42
    assert all(torch.equal(before[k], v) for k, v in serving.state_dict().items())


def test_exploding_learning_rate_is_a_diverged_round():
    cfg = FinetuneConfig(min_round_events=20, epochs=3, lr=1e4, max_grad_norm=None)
    ups = updates_from_clicks(_cycle_clicks(30, 12), window=20, n_partitions=2)
    w = build_window(ups, [], {}, cfg, np.random.default_rng(0), max_len=10)
    o = run_round(_model(), VOCAB, w, cfg, torch.device("cpu"))
    assert not o.accepted and o.reason == "diverged" and o.candidate is None
    assert "finetune.lr" in o.error


def test_a_round_whose_time_limit_ends_before_the_first_step_publishes_nothing():
    cfg = FinetuneConfig(min_round_events=20, epochs=3, max_seconds=1e-9)
    ups = updates_from_clicks(_cycle_clicks(30, 12), window=20, n_partitions=2)
    w = build_window(ups, [], {}, cfg, np.random.default_rng(0), max_len=10)
    o = run_round(_model(), VOCAB, w, cfg, torch.device("cpu"))
    assert o.reason == "no_steps" and not o.accepted and o.candidate is None
    assert o.train.steps == 0 and o.train.stop_reason == "max_seconds"


def test_an_epoch_stopped_before_its_first_step_does_not_report_a_zero_loss():
    """The demo's fine-tune round on a loaded machine: 1 step in epoch 1, stopped at the start of epoch 2; its log
    line said "train_loss": 0.0 (the empty epoch's record) instead of the loss of the step it made."""
    cfg = FinetuneConfig(min_round_events=20, epochs=3, batch_size=1024, max_seconds=60)
    ups = updates_from_clicks(_cycle_clicks(30, 12), window=20, n_partitions=2)
    w = build_window(ups, [], {}, cfg, np.random.default_rng(0), max_len=10)
    polls = iter([False])
    seqs = [[int(i) for i in s] for s in w.sequences]  # raw ids 1..40 = internal ids here
    stats = train_window(_model(), seqs, cfg, torch.device("cpu"), should_stop=lambda: next(polls, True))
    assert stats.steps == 1 and stats.stop_reason == "stopped"
    assert 1.0 < stats.loss < 20.0 and stats.ce > 0


def test_candidate_worse_than_serving_on_holdout_is_rejected():
    # the serving model was trained on the cycle; the window teaches the reverse cycle, the held-out part
    # follows the original cycle again -> the candidate is worse there than the serving model
    cfg = FinetuneConfig(min_round_events=20, epochs=30, max_steps=300, batch_size=32, lr=5e-3, tolerance=0.0,
                         holdout_fraction=0.2, divergence_loss_ratio=100)
    ups = updates_from_clicks(_cycle_clicks(30, 14), window=20, n_partitions=1)
    w = build_window(ups, [], {}, cfg, np.random.default_rng(0), max_len=10)
    trained = run_round(_model(), VOCAB, w, cfg, torch.device("cpu")).candidate
    reverse = [(u, str(1 + (40 - int(i)) % 40), ts) for u, i, ts in _cycle_clicks(30, 14)]
    rev = updates_from_clicks(reverse, window=20, n_partitions=1)
    fwd = updates_from_clicks(_cycle_clicks(30, 14), window=20, n_partitions=1)[-60:]
    mixed = rev[:-60] + fwd
    w2 = build_window(mixed, [], {}, cfg.model_copy(update={"holdout_min_events": 60, "holdout_max_events": 60}),
                      np.random.default_rng(0),
                      max_len=10)
    assert [u.event_id for u in w2.holdout] == [u.event_id for u in fwd]
    o = run_round(trained, VOCAB, w2, cfg, torch.device("cpu"))
    assert o.reason == "heldout" and not o.accepted
    assert o.heldout_candidate["NDCG@10"] < o.heldout_serving["NDCG@10"]


def test_finetune_config_is_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="finetune"):
        _load({"finetune.lr": -1})
    with pytest.raises(ConfigError, match="min_round_events"):
        _load({"finetune.min_round_events": 5, "finetune.holdout_min_events": 10})
    with pytest.raises(ConfigError, match="finetune.nope"):
        _load({"finetune.nope": 1})
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        _load({"finetune.device": "tpu"})  # refused on load, not after the worker reached the broker
    assert _load({"finetune.device": "cuda:1"}).finetune.device == "cuda:1"


def test_device_option_belongs_to_the_finetune_worker(capsys):
    from adrec_stream.cli import main

    assert main(["worker", "ingest", "--device", "cpu"]) == 2  # was silently ignored
    assert "--device applies to the finetune worker only" in capsys.readouterr().err


def _load(overrides):
    from adrec_stream.stream.config import load_stream_config

    return load_stream_config(None, overrides)


def test_the_window_does_not_depend_on_how_the_partitions_interleaved_on_arrival():
    """The worker's polls return one partition's batch after another's, so its arrival order differed from the
    click order the in-process replay feeds: the newest 10 % held out were partition 3's newest clicks, not the
    newest clicks. Fresh updates are now each partition's offset order merged by event time."""
    cfg = FinetuneConfig(holdout_fraction=0.2, holdout_min_events=1, min_round_events=4, replay_ratio=0.0)
    clicks = [(f"u{k % 7}", str(1 + (3 * k) % 40), float(k // 2)) for k in range(60)]  # ties in event time
    ups = updates_from_clicks(clicks, window=10, n_partitions=4)
    batched = sorted(ups, key=lambda u: (u.partition, u.offset))  # one partition after another
    assert batched != ups
    windows = []
    for order in (ups, batched, sorted(ups, key=lambda u: (-u.partition, u.offset))):
        t = UpdateTracker(max_recent=100)
        t.add(order)
        windows.append(build_window(t.fresh({}), t.pool({}), {}, cfg, np.random.default_rng(0), max_len=10))
    assert all(w.holdout == windows[0].holdout and w.sequences == windows[0].sequences for w in windows)
    held = [float(u.event_ts) for u in windows[0].holdout]
    assert len(held) == 12 and min(held) >= max(float(u.event_ts) for u in windows[0].train)  # the newest by time
    assert all(not (u.offset <= windows[0].cut.get(u.partition, -1)) for u in windows[0].holdout)  # never covered
