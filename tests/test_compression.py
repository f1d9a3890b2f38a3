"""Compressed Kafka record batches (none, gzip, snappy, lz4, zstd) through the real embedded broker, read by every
worker that reads a topic: the ingest and score workers (Faust on aiokafka) and the fine-tune worker's consumer
(kafka-python); and a batch a client cannot decode is one clear operations error, not a crash loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest
from conftest import REPO_ROOT, click_producer, consume, send_checked, write_stream_config

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction
from adrec_stream.incremental.worker import FinetuneWorker
from adrec_stream.state.partitioned import user_sequence
from adrec_stream.stream.events import click_key, encode_click
from adrec_stream.stream.undecodable import UndecodableBatchError

pytestmark = pytest.mark.broker

CODECS = (None, "gzip", "snappy", "lz4", "zstd")
#: an ignored extra field that makes a one-record batch compressible (kafka-python sends a batch uncompressed when
#: compression does not shrink it)
PAD = "clicked from the recommendations carousel on the home page; " * 8


def _compressible_click(ev: Interaction) -> bytes:
    return orjson.dumps({**orjson.loads(encode_click(ev)), "note": PAD})


def _counting(monkeypatch: pytest.MonkeyPatch, direction: str) -> Counter:
    """Count kafka-python's calls of each codec's encoder or decoder (``direction`` "encode" / "decode") that
    actually ran on a compressed batch (an encoder that did not shrink the batch is not counted: the batch then
    goes out uncompressed)."""
    import kafka.record.default_records as records

    calls: Counter = Counter()
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        name = f"{codec}_{direction}"
        real = getattr(records, name)

        def counted(data, *args, _real=real, _codec=codec, **kwargs):
            out = _real(data, *args, **kwargs)
            if direction == "decode" or len(out) < len(data):
                calls[_codec] += 1
            return out

        monkeypatch.setattr(records, name, counted)
    return calls


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], codec: str | None,
             partition: int | None = None) -> None:
    producer = click_producer(bootstrap, compression_type=codec)
    try:
        send_checked(producer, topic, records, partition)
    finally:
        producer.close(5)


def test_every_codec_is_applied_by_ingest_and_read_by_score_and_finetune(stream_config, tiny_registry, spawn_worker,
                                                                          monkeypatch):
    cfg = stream_config
    bootstrap = effective_bootstrap(cfg)
    encoded = _counting(monkeypatch, "encode")
    clicks = {codec: Interaction(f"u-{codec}", str(i + 1), 1_000_000.0 + i, f"click-{codec}")
              for i, codec in enumerate(CODECS)}
    for codec, ev in clicks.items():  # one producer per codec, one click each
        _produce(bootstrap, cfg.topics.clicks.name, [(click_key(ev), _compressible_click(ev))], codec)
    # sequence updates written by producers with each codec too: the score and fine-tune workers read this topic
    updates = {codec: {"user_id": f"v-{codec}", "items": ["3", str(i + 1)], "event_id": f"update-{codec}",
                       "event_ts": 2_000_000.0 + i, "note": PAD} for i, codec in enumerate(CODECS)}
    for codec, upd in updates.items():
        _produce(bootstrap, cfg.topics.sequence_updates.name, [(upd["user_id"].encode(), orjson.dumps(upd))], codec)
    assert dict(encoded) == {"gzip": 2, "snappy": 2, "lz4": 2, "zstd": 2}  # every batch really went out compressed

    ingest = spawn_worker("ingest", cfg)
    score = spawn_worker("score", cfg)
    n = 2 * len(CODECS)
    out = consume(bootstrap, cfg.topics.sequence_updates.name, n)
    got = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in out}
    assert set(got) == {ev.event_id for ev in clicks.values()} | {u["event_id"] for u in updates.values()}
    for ev in clicks.values():  # the ingest worker applied every click: its update ...
        assert got[ev.event_id]["items"] == [ev.item_id] and got[ev.event_id]["user_id"] == ev.user_id
    recs = consume(bootstrap, cfg.topics.recommendations.name, n)
    assert {orjson.loads(r.value)["event_id"] for r in recs} == set(got)  # the score worker read all ten
    assert ingest.stop() == 0 and score.stop() == 0
    for ev in clicks.values():  # ... and its stored sequence
        assert user_sequence(cfg.state_dir, cfg.topics.clicks.name, cfg.topics.clicks.partitions, ev.user_id,
                             window=cfg.window) == [ev.item_id]

    decoded = _counting(monkeypatch, "decode")
    worker = FinetuneWorker(cfg, device="cpu")
    consumer = worker._consumer()
    try:
        deadline, seen = time.time() + 60, 0
        while seen < n and time.time() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                seen += worker.ingest([(tp.partition, m.offset, m.value) for m in msgs])
    finally:
        consumer.close()
    assert seen == n and worker.counters.bad_updates == 0
    assert set(decoded) == {"gzip", "snappy", "lz4", "zstd"}  # the broker served the compressed batches as such


def _produce_undecodable(monkeypatch: pytest.MonkeyPatch, bootstrap: str, topic: str, key: bytes, value: bytes,
                         partition: int) -> None:
    """One lz4 batch whose payload is not lz4 (its CRC is right: the broker stores it, clients fail to decode it)."""
    import kafka.record.default_records as records

    with monkeypatch.context() as m:
        m.setattr(records, "lz4_encode", lambda data: b"not an lz4 frame")
        _produce(bootstrap, topic, [(key, value)], "lz4", partition)


def test_an_undecodable_batch_is_one_clear_error_naming_topic_partition_and_offset(stream_config, tmp_path,
                                                                                  monkeypatch):
    """The ingest worker died with a bare `cramjam.DecompressionError` traceback (and again at every restart);
    now it stops with one line naming the topic, partition, offset and cause, exit 2 (supervisors restart only
    3), and the fine-tune worker's consumer raises the same error instead of the library's."""
    cfg = stream_config
    bootstrap = effective_bootstrap(cfg)
    good = Interaction("u1", "5", 1_000_000.0, "good")
    _produce(bootstrap, cfg.topics.clicks.name, [(click_key(good), encode_click(good))], None, partition=0)
    bad = Interaction("u1", "6", 1_000_001.0, "bad")
    _produce_undecodable(monkeypatch, bootstrap, cfg.topics.clicks.name, click_key(bad), _compressible_click(bad), 0)
    cfg_path = write_stream_config(cfg, tmp_path / "stream.yaml")
    res = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "worker", "ingest", "--config", str(cfg_path)],
                         capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("adrec-stream worker: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith(f"adrec-stream worker: error: cannot decode the record batch of "
                                f"{cfg.topics.clicks.name} partition 0 at offset 1: DecompressionError: ")
    assert "The batch is corrupt or was written by an incompatible producer" in errors[0]
    events = [json.loads(ln[ln.index("{"):]) for ln in res.stderr.splitlines() if '"undecodable_record_batch"' in ln]
    assert len(events) == 1
    assert (events[0]["topic"], events[0]["partition"], events[0]["offset"]) == (cfg.topics.clicks.name, 0, 1)
    assert events[0]["level"] == "error" and events[0]["cause"].startswith("DecompressionError: ")
    assert "Traceback" not in res.stderr

    upd = orjson.dumps({"user_id": "u1", "items": ["5", "6"], "event_id": "bad", "note": PAD})
    _produce_undecodable(monkeypatch, bootstrap, cfg.topics.sequence_updates.name, b"u1", upd, 1)
    consumer = FinetuneWorker(cfg, device="cpu")._consumer()
    try:
        with pytest.raises(UndecodableBatchError) as info:
            deadline = time.time() + 60
            while time.time() < deadline:
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()
    err = info.value
    assert (err.topic, err.partition, err.offset) == (cfg.topics.sequence_updates.name, 1, 0)
    assert str(err).startswith(f"cannot decode the record batch of {cfg.topics.sequence_updates.name} partition 1 "
                               "at offset 0: ")


def test_a_missing_codec_library_is_named_with_its_fix(stream_config, tmp_path):
    """The failure as first seen: the worker's client lacks the lz4 library (here hidden from the worker process)
    and a producer sends one lz4 click: one line naming where and why, and how to fix the install."""
    cfg = stream_config
    ev = Interaction("u1", "5", 1_000_000.0, "lz4")
    _produce(effective_bootstrap(cfg), cfg.topics.clicks.name, [(click_key(ev), _compressible_click(ev))], "lz4", 1)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "cramjam.py").write_text("raise ImportError('cramjam hidden by the test')\n")
    cfg_path = write_stream_config(cfg, tmp_path / "stream.yaml")
    res = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "worker", "ingest", "--config", str(cfg_path)],
                         capture_output=True, text=True, timeout=180, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(hide)})
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("adrec-stream worker: error:")]
    assert errors == [f"adrec-stream worker: error: cannot decode the record batch of {cfg.topics.clicks.name} "
                      "partition 1 at offset 0: UnsupportedCodecError: Libraries for lz4 compression codec not found. "
                      "The compression codec's library is missing from this install: reinstall the project (pip "
                      "install -e .; it brings cramjam, lz4, python-snappy and zstandard) and restart the worker."]
    assert "Traceback" not in res.stderr


def test_the_hint_tells_a_missing_codec_from_a_corrupt_batch():
    missing = UndecodableBatchError("clicks", 3, 41, "UnsupportedCodecError: Libraries for lz4 compression codec "
                                    "not found")
    assert str(missing) == ("cannot decode the record batch of clicks partition 3 at offset 41: UnsupportedCodecError: "
                            "Libraries for lz4 compression codec not found. The compression codec's library is missing "
                            "from this install: reinstall the project (pip install -e .; it brings cramjam, lz4, "
                            "python-snappy and zstandard) and restart the worker.")
    corrupt = UndecodableBatchError("clicks", 0, 7, "CorruptRecordException: Invalid CRC")
    assert "move the consumer group past the batch" in str(corrupt)
