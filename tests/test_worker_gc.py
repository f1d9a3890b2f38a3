"""Garbage collection of the ingest and score worker processes (``worker_cli.tune_gc``)."""

from __future__ import annotations

import gc

from adrec_stream.stream.worker_cli import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_freezes_the_start_objects_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        survivor = [["built at start"]]  # a container alive at start: frozen, never scanned by later collections
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0 and gc.is_tracked(survivor)
        assert not any(survivor is o for o in gc.get_objects())  # frozen objects leave the collected generations
        cycle: list = []
        cycle.append(cycle)  # garbage with a cycle is still collected after the change
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
