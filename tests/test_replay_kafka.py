"""``evaluate-replay --through-kafka``: the model policies replayed through the real pipeline (embedded Tansu
broker, ingest / score / fine-tune worker processes, RocksDB stores) agree with the in-process replay.

The integration test replays a synthetic successor stream (each user's next item = last + 1) with a tiny ADRec;
the unit tests pin the judging rules (previous-click list, history exclusion, truncated lists, missing
recommendations), the lock-step segments and the agreement verdict.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_replay_eval import TINY_FLAGS, run_cli, write_successor

from adrec_stream.data.events import Interaction
from adrec_stream.evaluation.metrics import tie_metrics
from adrec_stream.evaluation.replay import kafka as K


def _log(rows: list[tuple[str, str]]) -> tuple[list[Interaction], list[Interaction]]:
    inter = [Interaction(u, i, float(t)) for t, (u, i) in enumerate(rows)]
    return inter, [Interaction(x.user_id, x.item_id, x.ts, f"f:{k}") for k, x in enumerate(inter)]


def test_segments_end_at_every_due_round_and_respect_the_chunk() -> None:
    assert K.segments(10, [3, 7], chunk=100) == [(0, 4, True), (4, 8, True), (8, 10, False)]
    assert K.segments(10, [], chunk=4) == [(0, 4, False), (4, 8, False), (8, 10, False)]
    assert K.segments(10, [9], chunk=6) == [(0, 6, False), (6, 10, True)]
    assert K.segments(5, [7, -1], chunk=10) == [(0, 5, False)]  # positions outside the replay are ignored
    with pytest.raises(ValueError, match="chunk"):
        K.segments(3, [], chunk=0)


def test_a_click_is_judged_against_the_list_emitted_after_the_users_previous_click() -> None:
    warm, _ = _log([("a", "1"), ("a", "2")])
    replay, clicks = _log([("a", "3"), ("b", "9"), ("a", "4"), ("a", "5"), ("b", "7"), ("a", "2")])
    filler = [str(100 + j) for j in range(30)]
    recs = {"f:0": {"items": ["2", "4", "8"], "model_version": 1, "fallback": False},  # after a's click 3: 2 is seen
            "f:1": {"items": ["5", "6"], "model_version": 1, "fallback": True},
            "f:2": {"items": ["9", "8", *filler], "model_version": 2, "fallback": False},
            "f:3": {"items": ["2", *filler], "model_version": 2, "fallback": False}}  # a re-clicks 2 next
    run = K.judge(replay, clicks, recs, warm, exclude_seen=True)
    # a's first replayed click and b's first click: no list; a's click 4: '2' removed (seen), 4 at rank 1;
    # a's re-click of 2: removed from the list with the rest of the history, a miss (as in-process)
    assert run.has_rec.tolist() == [False, False, True, True, True, True]
    assert run.higher.tolist() == [K.K_MAX, K.K_MAX, 0, K.K_MAX, K.K_MAX, K.K_MAX]
    assert run.truncated.tolist() == [False, False, False, False, True, False]  # b's list: 2 items, 7 not in it
    assert run.version.tolist() == [-1, -1, 1, 2, 1, 2]
    assert run.fallback.tolist() == [False, False, False, False, True, False]
    no_excl = K.judge(replay, clicks, recs, warm, exclude_seen=False)
    assert no_excl.higher[2] == 1 and no_excl.higher[5] == 0  # '2' stays in the lists
    s = K.summary(run)["overall"]
    assert s["total"] == 6 and s["no_recommendation"] == 2 and s["HR@10"] == pytest.approx(1 / 6)


def _run(higher: np.ndarray, truncated: np.ndarray | None = None) -> K.KafkaRun:
    """A static-policy run with a list (served by v1, not the fallback) before every click."""
    n = higher.size
    cut = np.zeros(n, bool) if truncated is None else truncated
    return K.KafkaRun("adrec-static", higher, np.ones(n, bool), np.zeros(n, bool), cut, np.ones(n, np.int64))


def test_agreement_passes_on_equal_figures_and_fails_outside_the_tolerance() -> None:
    n = 400
    rng = np.random.default_rng(0)
    higher = np.where(rng.random(n) < 0.3, rng.integers(0, 10, n), K.K_MAX).astype(np.int64)
    run = _run(higher)
    same = tie_metrics(higher, np.zeros(n, np.int64))
    a = K.agreement(run, same, np.ones(n, np.int64))
    assert a["passed"] and a["rel_diff"]["NDCG@10"] == 0.0 and a["same_hit10"] == 1.0 and a["common_clicks"] == n
    worse = higher.copy()
    worse[: n // 4] = K.K_MAX  # a quarter of the pipeline's hits lost
    run_w = _run(worse)
    b = K.agreement(run_w, same, np.ones(n, np.int64))
    assert not b["passed"] and b["rel_diff"]["HR@10"] < -0.02
    # rare hits: one click's difference is within the slack of SLACK_CLICKS clicks, four are not
    rare = np.full(n, K.K_MAX, np.int64)
    rare[:10] = 0
    base = tie_metrics(rare, np.zeros(n, np.int64))
    for lost, ok in ((1, True), (4, False)):
        r = rare.copy()
        r[:lost] = K.K_MAX
        assert K.agreement(_run(r), base, np.ones(n, np.int64))["passed"] is ok
    cut = np.zeros(n, bool)
    cut[:10] = True
    assert K.agreement(_run(higher, cut), same, np.ones(n, np.int64))["common_clicks"] == n - 10  # truncated lists left out


@pytest.fixture(scope="module")
def kafka_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    tmp = tmp_path_factory.mktemp("through_kafka")
    data = write_successor(tmp / "successor.csv", users=150, per_user=25, late_users=10)
    out = tmp / "out"
    rc = run_cli(["--dataset", str(data), "--out", str(out), "--cache-dir", str(tmp / "cache"), "--no-progress",
                  "--policy", "adrec-static,adrec-incremental,markov", "--exclude-seen", "--through-kafka",
                  "--kafka-work-dir", str(tmp / "work"), "--train-threads", "1", *TINY_FLAGS,
                  "--epochs", "pretrain=2,align=1,finetune=2", "--set", "finetune.min_new_events=300",
                  "--set", "finetune.max_steps=5", "--set", "finetune.threads=1", "--set", "finetune.nice=0",
                  "--bootstrap", "100"])
    return rc, json.loads((out / "metrics.json").read_text())


def test_through_kafka_agrees_with_the_in_process_replay(kafka_run) -> None:
    rc, m = kafka_run
    assert rc == 0 and m["mode"] == "in-process + through-kafka"
    tk = m["through_kafka"]
    assert set(tk["policies"]) == {"adrec-static", "adrec-incremental"}  # markov is not part of the pipeline
    for name, p in tk["policies"].items():
        a, o = p["agreement"], p["overall"]
        assert a["passed"], (name, a)
        assert abs(a["rel_diff"]["NDCG@10"]) <= tk["tolerance"] and a["same_hit10"] >= 0.97
        # clicks where both modes served the same model version agree click by click; the others are a user's
        # first click after a swap, whose pipeline list was made at the previous click by the older version
        assert a["same_version"]["same_hit10"] >= 0.99
        assert a["same_version"]["clicks"] == a["common_clicks"] if name == "adrec-static" else \
            a["same_version"]["clicks"] >= 0.5 * a["common_clicks"]
        assert o["total"] == m["data"]["replay_events"] and p["dead_lettered"] == 0 and p["worker_restarts"] == 0
        assert o["no_recommendation"] == a["excluded"]["no_recommendation"] > 0
        # the successor stream is learnable: the pipeline's lists hit far above chance (1/50 items)
        assert o["HR@10"] > 0.5


def test_through_kafka_rounds_train_on_the_same_windows_as_in_process(kafka_run) -> None:
    """The worker read the same updates as the in-process round (lock-step segments) and, since the fresh
    updates no longer depend on how the partitions interleaved on arrival, built the same window: same held-out
    part, same guard figures, same verdicts."""
    _, m = kafka_run
    inproc = [r for r in m["policies"]["adrec-incremental"]["rounds"] if r["status"] != "skipped"]
    worker = [r for r in m["through_kafka"]["policies"]["adrec-incremental"]["rounds"] if r["status"] != "skipped"]
    assert len(inproc) == len(worker) >= 2
    for a, b in zip(inproc, worker):
        assert a["status"] == b["status"]
        assert (a["window_events"], a["holdout_events"], a["steps"]) == (b["window_events"], b["holdout_events"],
                                                                         b["steps"])
        assert a["heldout_NDCG@10_serving"] == pytest.approx(b["heldout_NDCG@10_serving"], abs=1e-4)
        assert a["heldout_NDCG@10_candidate"] == pytest.approx(b["heldout_NDCG@10_candidate"], abs=1e-4)
    served = m["through_kafka"]["policies"]["adrec-incremental"]["versions_served"]
    published = sum(r["status"] == "published" for r in worker)
    assert served == list(range(1, published + 2))  # v1 = the static model, then every published round


def test_report_has_the_through_kafka_section(kafka_run) -> None:
    _, m = kafka_run
    from adrec_stream.evaluation.replay.report import render_report

    md = render_report(m)
    assert "## Through Kafka" in md and md.count("**agree**") == 2
