"""Batch cutting of the workers' faust streams (:mod:`adrec_stream.stream.batches`).

The generator's logic runs here on a stream whose buffer the test controls (like faust's stream iterator it
yields to the event loop before each get); the real faust stream path is covered end to end by the pipeline and
reliability tests, whose workers take both agents' batches through it (tests/conftest.py keeps the default
``*_within_s`` 0; until 2026-12-01 it set the ingest agent's to 0.05, faust's take).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace

import pytest

from adrec_stream.stream.batches import event_batches


class BufferedStream:
    """A stream over a buffer the test fills: iteration waits while it is empty; ``channel.empty()`` reports it.

    ``clear_after``: once that many events were taken, clear the buffer at the next get, after its turn of the
    event loop (as faust's ``flow_control.clear()`` does when a rebalance runs in that turn). ``fail_after``:
    raise after that many events.
    """

    def __init__(self, clear_after: int | None = None, fail_after: int | None = None) -> None:
        self.buffer: deque[int] = deque()
        self.arrived = asyncio.Event()
        self.current_event = None
        self.channel = SimpleNamespace(empty=lambda: not self.buffer)
        self.take_calls: list[tuple[int, float]] = []
        self.taken = 0
        self.clear_after, self.fail_after = clear_after, fail_after

    def add(self, *values: int) -> None:
        self.buffer.extend(values)
        self.arrived.set()

    def __aiter__(self) -> BufferedStream:
        return self

    async def __anext__(self) -> int:
        await asyncio.sleep(0)  # faust's stream iterator yields to the loop before each get
        if self.taken == self.clear_after:
            self.buffer.clear()  # a rebalance ran during that turn
        if self.taken == self.fail_after:
            raise RuntimeError("stream failed")
        while not self.buffer:
            self.arrived.clear()
            await self.arrived.wait()
        value = self.buffer.popleft()
        self.taken += 1
        self.current_event = SimpleNamespace(value=value)
        return value

    async def noack_take(self, max_: int, within: float):
        self.take_calls.append((max_, within))
        yield [SimpleNamespace(value=v) for v in self.buffer]


async def _collect(stream: BufferedStream, max_records: int, within_s: float, out: list[list[int]]) -> None:
    async for batch in event_batches(stream, max_records, within_s):
        out.append([ev.value for ev in batch])


def test_natural_batches_take_the_backlog_up_to_the_maximum_then_each_arrival_at_once():
    async def run() -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        stream, out = BufferedStream(), []
        stream.add(*range(10))  # a backlog: what arrived while the previous batch was handled
        task = asyncio.ensure_future(_collect(stream, 4, 0.0, out))
        await asyncio.sleep(0.01)
        backlog = [list(b) for b in out]
        stream.add(10)  # a single arrival is handed over alone, with no wait for more
        await asyncio.sleep(0.01)
        single = [list(b) for b in out[len(backlog):]]
        stream.add(11, 12)
        await asyncio.sleep(0.01)
        task.cancel()
        return backlog, single, out[len(backlog) + len(single):]

    backlog, single, pair = asyncio.run(run())
    assert backlog == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert single == [[10]]
    assert pair == [[11, 12]]


def test_a_buffer_cleared_mid_batch_hands_the_taken_events_over_at_once():
    # found by a fresh-user review: waiting inside the stream with events in hand never handed them over, so
    # faust's wait for unacknowledged events at a rebalance would never end
    async def run() -> list[list[int]]:
        stream, out = BufferedStream(clear_after=3), []
        stream.add(*range(10))
        task = asyncio.ensure_future(_collect(stream, 100, 0.0, out))
        await asyncio.sleep(0.05)
        task.cancel()
        return out

    out = asyncio.run(run())
    assert [v for batch in out for v in batch] == [0, 1, 2]


def test_the_stream_error_reaches_the_caller():
    async def run() -> list[list[int]]:
        stream, out = BufferedStream(fail_after=2), []
        stream.add(*range(5))
        await asyncio.wait_for(_collect(stream, 100, 0.0, out), 1.0)
        return out

    with pytest.raises(RuntimeError, match="stream failed"):
        asyncio.run(run())


def test_a_positive_wait_uses_faust_noack_take_with_it():
    async def run() -> tuple[list[list[int]], list[tuple[int, float]]]:
        stream, out = BufferedStream(), []
        stream.add(1, 2, 3)
        await _collect(stream, 500, 0.005, out)
        return out, stream.take_calls

    out, calls = asyncio.run(run())
    assert calls == [(500, 0.005)]
    assert out == [[1, 2, 3]]
