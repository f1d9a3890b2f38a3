"""Batches of events from a faust stream whose acknowledgements are manual (``stream.noack()``).

Two ways, chosen by the batch section's ``*_within_s``:

- ``0`` (the default): **natural batching**. Each event is taken from the stream in turn; the batch is handed over
  when it holds ``max_records`` events or when no further event waits in the stream's buffer. A worker that keeps
  up hands over each event at once (no added wait); one that falls behind finds its buffer filled while it
  handled the previous batch and hands over everything waiting, up to the maximum.
- ``> 0``: faust's ``noack_take(max_records, within=within_s)``: a batch is handed over when full or when
  ``within_s`` passed. Faust's take stops adding events while the previous batch is being handled and then
  adds them one by one until the wait ends, so under load its batches are bounded by what that wait lets in
  (measured: ≈ 50 records per 5 ms wait on an ingest worker, docs/benchmarks.md "Ingest").

Either way nothing is acknowledged here: the caller acknowledges the events whose effects it stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def event_batches(stream: Any, max_records: int, within_s: float) -> AsyncIterator[list[Any]]:
    """Yield lists of faust events (``event.message`` is the Kafka record) from ``stream``.

    Args:
        stream: a faust stream with acknowledgements off (``agent_stream.noack()``).
        max_records: the most events per batch (≥ 1).
        within_s: 0 for natural batching, else faust's ``noack_take`` wait in seconds (see the module docstring).

    Yields:
        Non-empty lists of at most ``max_records`` events, in the stream's order.
    """
    if within_s > 0:
        async for events in stream.noack_take(max_records, within=within_s):
            yield events
        return
    batch: list[Any] = []
    async for _ in stream:
        batch.append(stream.current_event)
        if len(batch) >= max_records or stream.channel.empty():
            yield batch
            batch = []
