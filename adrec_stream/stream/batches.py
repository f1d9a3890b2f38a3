"""Batches of events from a faust stream whose acknowledgements are manual (``stream.noack()``).

Two ways, chosen by the batch section's ``*_within_s``:

- ``0`` (the default): **natural batching**. A feeder task takes the events from the stream in turn into a local
  queue (at most ``max_records`` ahead, plus the one it holds while the queue is full); a batch is handed over when
  it holds ``max_records`` events or when no further event waits, neither in the local queue nor in the stream's
  buffer. A worker that keeps up hands over each event at once (no added wait); one that falls behind finds the
  events that arrived while it handled the previous batch waiting and hands them over together, up to the maximum.
  The batcher never waits inside the stream while it holds events: when a rebalance clears the stream's buffer
  (faust's ``flow_control.clear()``) in the middle of a batch, the batch is handed over at once. Events already in
  the local queue are not cleared with the stream buffer: faust counts them as unacknowledged from the moment the
  feeder takes them, so a revocation waits (``consumer.wait_empty()``) until the agent has handled and acknowledged
  them - while the partition is still the worker's, before faust's revocation signal closes its store - up to
  ``max_records`` events more than the batch in flight.
  Faust's current-event context variable (``faust.current_event()``) is set in the feeder task, so the agent
  does not see it; this project's agents do not use it (records are produced with the producer directly).
- ``> 0``: faust's ``noack_take(max_records, within=within_s)``: a batch is handed over when full or when
  ``within_s`` passed. Faust's take stops adding events while the previous batch is being handled and then
  adds them one by one until the wait ends, so under load its batches are bounded by what that wait lets in
  (measured: 37-54 records per take with a 5 ms wait on an ingest worker, docs/benchmarks.md "Ingest").

Natural batching fills its batches only with ``consumer.direct_delivery`` on: faust's per-record task wrapping
yields to the event loop after every record, so at most a record or two wait at a time (measured: no gain
without it).

Either way nothing is acknowledged here: the caller acknowledges the events whose effects it stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

#: event-loop turns the batcher waits for the feeder to move a waiting event before it hands the batch over anyway
MAX_IDLE_TURNS = 100


async def _feed(stream: Any, pending: asyncio.Queue) -> None:
    """Move the stream's events into ``pending`` (waits while it is full)."""
    async for _ in stream:
        await pending.put(stream.current_event)


async def _first(pending: asyncio.Queue, feeder: asyncio.Future) -> Any:
    """The next event of ``pending``; the feeder's error if it failed first, None if the stream ended."""
    if not pending.empty():
        return pending.get_nowait()
    getter = asyncio.ensure_future(pending.get())
    try:
        await asyncio.wait({getter, feeder}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()  # not yet served: the queue keeps its events
    if getter.done() and not getter.cancelled():
        return getter.result()
    feeder.result()  # raises the stream's error
    return None


async def event_batches(stream: Any, max_records: int, within_s: float) -> AsyncIterator[list[Any]]:
    """Yield lists of faust events (``event.message`` is the Kafka record) from ``stream``.

    Args:
        stream: a faust stream with acknowledgements off (``agent_stream.noack()``).
        max_records: the most events per batch (≥ 1).
        within_s: 0 for natural batching, else faust's ``noack_take`` wait in seconds (see the module docstring).

    Yields:
        Non-empty lists of at most ``max_records`` events, in the stream's order.

    Raises:
        Exception: whatever the stream's iteration raised.
    """
    if within_s > 0:
        async for events in stream.noack_take(max_records, within=within_s):
            yield events
        return
    pending: asyncio.Queue = asyncio.Queue(maxsize=max_records)
    feeder = asyncio.ensure_future(_feed(stream, pending))
    try:
        while True:
            first = await _first(pending, feeder)
            if first is None:
                return
            batch = [first]
            idle = 0
            while len(batch) < max_records:
                if not pending.empty():
                    batch.append(pending.get_nowait())
                    idle = 0
                elif not stream.channel.empty() and not feeder.done() and idle < MAX_IDLE_TURNS:
                    idle += 1
                    await asyncio.sleep(0)  # the feeder moves the waiting events over
                else:
                    break
            yield batch
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)  # its end (and any error) is collected here
