"""Garbage collection of the ingest and score worker processes (``worker_cli.tune_gc``)."""

from __future__ import annotations

import gc

from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.handler_support import WorkerStats
from adrec_stream.stream.worker_cli import tune_gc


def test_tune_gc_freezes_the_start_objects_and_raises_the_young_threshold():
    before = gc.get_threshold()
    threshold = StreamConfig().batch.gc_young_threshold
    assert threshold == 50_000
    try:
        survivor = [["built at start"]]  # a container alive at start: frozen, never scanned by later collections
        tune_gc(threshold)
        assert gc.get_threshold() == (threshold, before[1], before[2])
        assert gc.get_freeze_count() > 0 and gc.is_tracked(survivor)
        assert not any(survivor is o for o in gc.get_objects())  # frozen objects leave the collected generations
        cycle: list = []
        cycle.append(cycle)  # garbage with a cycle is still collected after the change
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_zero_keeps_the_defaults_and_collections_are_counted():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    tune_gc(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
    stats = WorkerStats()
    callback = stats.count_gc()
    try:
        gc.collect()
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert stats.gc_collections == 2 and 0 < stats.gc_s_total < 10
    gc.collect()
    assert stats.gc_collections == 2  # removed: no longer counted
    assert stats.as_dict()["gc_s_total"] == round(stats.gc_s_total, 3)


def test_threshold_out_of_range_is_a_config_error():
    import pytest

    from adrec_stream.errors import ConfigError
    from adrec_stream.stream.config import load_stream_config

    for bad in (-1, 3_000_000_000):  # C int overflow in gc.set_threshold above 2**31 - 1
        with pytest.raises(ConfigError, match="gc_young_threshold"):
            load_stream_config(None, {"batch.gc_young_threshold": bad})
