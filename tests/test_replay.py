"""Replay producer: selection of the held-out part with deterministic event ids, and producing it."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO_ROOT, consume, write_stream_config

from adrec_stream.data.events import chronological_split, read_interactions
from adrec_stream.errors import ConfigError
from adrec_stream.stream import replay
from adrec_stream.stream.events import decode_click

ML100K = REPO_ROOT.parent / "shared" / "data" / "events" / "ml-100k" / "u.data"
needs_ml100k = pytest.mark.skipif(not ML100K.is_file(), reason=f"{ML100K} not present")


@pytest.fixture(scope="module")
def ml100k():
    return read_interactions(ML100K)


@needs_ml100k
def test_select_held_out_part_with_deterministic_ids(ml100k):
    clicks = replay.select_clicks(ml100k, "u.data", skip_fraction=0.8)
    train, rest = chronological_split(ml100k, 0.8)
    assert len(clicks) == len(rest) == 20_000
    assert clicks[0].event_id == "u.data:80000" and clicks[-1].event_id == "u.data:99999"
    assert [(c.user_id, c.item_id, c.ts) for c in clicks] == [(x.user_id, x.item_id, x.ts) for x in rest]
    assert all(a.ts <= b.ts for a, b in zip(clicks, clicks[1:]))
    again = replay.select_clicks(ml100k, "u.data", skip_fraction=0.8, limit=5)
    assert again == clicks[:5]


def test_select_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="skip-fraction"):
        replay.select_clicks([], "x", skip_fraction=1.0)
    with pytest.raises(ConfigError, match="limit"):
        replay.select_clicks([], "x", limit=-1)


@needs_ml100k
@pytest.mark.broker
def test_replay_cli_produces_keyed_clicks_in_time_order(stream_config, tmp_path: Path, capsys):
    cfg_path = write_stream_config(stream_config, tmp_path / "stream.yaml")
    args = argparse.Namespace(dataset=str(ML100K), format=None, rate=None, as_fast_as_possible=True, limit=600,
                              skip_fraction=0.8, no_progress=True, config=str(cfg_path), set=[])
    assert replay.run(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sent"] == 600 and summary["first_event_id"] == "u.data:80000"
    assert summary["last_event_id"] == "u.data:80599"
    got = consume(stream_config.broker.address, stream_config.topics.clicks.name, 600, settle_s=0.5)
    assert len(got) == 600
    per_user = defaultdict(list)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        ev = decode_click(r.value, r.key)
        assert r.key == ev.user_id.encode()  # key = user id
        per_user[ev.user_id].append(int(ev.event_id.split(":")[1]))
    # one user's clicks share a partition and keep the replay (time) order
    assert all(ids == sorted(ids) for ids in per_user.values())
    assert sorted(i for ids in per_user.values() for i in ids) == list(range(80_000, 80_600))


@needs_ml100k
@pytest.mark.broker
def test_replay_creates_a_missing_clicks_topic_with_the_configured_partitions(stream_config, tmp_path: Path,
                                                                               capsys):
    """Without the explicit creation, Tansu auto-creates a topic a producer sends to with 4 partitions
    (whatever the client asks); the ingest workers' keyed state expects the configured count (3 here)."""
    from adrec_stream.broker.admin import list_topics

    fresh = stream_config.topics.clicks.model_copy(update={"name": stream_config.topics.clicks.name + "-new",
                                                          "partitions": 3})
    cfg = stream_config.model_copy(update={"topics": stream_config.topics.model_copy(update={"clicks": fresh})})
    assert fresh.name not in list_topics(cfg.broker.address)
    cfg_path = write_stream_config(cfg, tmp_path / "stream.yaml")
    args = argparse.Namespace(dataset=str(ML100K), format=None, rate=None, as_fast_as_possible=True, limit=20,
                              skip_fraction=0.8, no_progress=True, config=str(cfg_path), set=[])
    assert replay.run(args) == 0
    assert list_topics(cfg.broker.address)[fresh.name] == 3
    assert len(consume(cfg.broker.address, fresh.name, 20, settle_s=0.3)) == 20


@pytest.mark.broker
def test_paced_replay_respects_the_rate(stream_config):
    import asyncio

    from adrec_stream.data.events import Interaction

    clicks = [Interaction("u1", str(i), float(i), f"p:{i}") for i in range(60)]
    res = asyncio.run(replay.produce_clicks(stream_config.broker.address, stream_config.topics.clicks.name,
                                            clicks, rate_per_s=100.0, progress=False))
    assert res.sent == 60
    assert 0.55 <= res.wall_s <= 3.0  # 60 events at 100/s: event 59 is due at 0.59 s
