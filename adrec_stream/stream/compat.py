"""Tansu compatibility layer: explicit, switched on only by ``broker.tansu_compat`` (default: embedded broker).

Measured Tansu 0.6.0 behaviours it works around:

1. **End-offset bug**: ``ListOffsets(latest)`` (``end_offsets()``, ``seek_to_end()``, lag) returns the first
   offset of the partition's last record batch + 1 instead of the true end whenever that batch holds more than
   one record. The high watermark carried in Fetch responses is correct. With compat on, end offsets are
   ``max(ListOffsets end, fetch high watermark)``; :func:`true_end_offsets` fetches once to learn the
   watermark. Faust's own ``highwaters()`` (table recovery) gets the same correction through
   :func:`install_faust_compat`.
2. **Slow group joins**: a new member gets partitions after ~half the session timeout. Compat caps the
   session / heartbeat / rebalance timeouts at 6 s / 1.5 s / 6 s (workers ready in ~3-7 s).
3. **Fetch long-poll**: Tansu holds every fetch for the full max-wait even when data has arrived; faust
   hard-codes 1.5 s. Compat caps the fetch max-wait at 100 ms (p50 click -> output latency ~50 ms).
4. **No ``OFFSET_OUT_OF_RANGE``**: a fetch beyond the log end returns an empty answer, so a consumer whose log
   was cut back (broker restarted empty without a rebalance, topic recreated) waits silently. Every worker
   checks for it (:meth:`~adrec_stream.ops.lag.ConsumerLag.past_log_end`) and rewinds with
   :func:`rewind_to_log_start`, with or without compat.

Against Apache Kafka, leave ``tansu_compat`` off: the consumer section's values are used as configured
(faust's fixed 1.5 s fetch wait is still replaced by ``consumer.fetch_max_wait_s``, which is harmless there).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from adrec_stream.broker.admin import merge_end_offsets
from adrec_stream.stream.config import StreamConfig

#: Caps applied when ``tansu_compat`` is on (seconds).
TANSU_SESSION_TIMEOUT_S = 6.0
TANSU_HEARTBEAT_INTERVAL_S = 1.5
TANSU_REBALANCE_TIMEOUT_S = 6.0
TANSU_FETCH_MAX_WAIT_S = 0.1


@dataclass(frozen=True)
class ConsumerTiming:
    """Consumer-group timing actually used by clients (seconds), after the compat caps."""

    session_timeout_s: float
    heartbeat_interval_s: float
    rebalance_timeout_s: float
    fetch_max_wait_s: float
    tansu_compat: bool


def consumer_timing(cfg: StreamConfig) -> ConsumerTiming:
    """Timing from ``cfg.consumer``; with ``broker.tansu_compat`` each value is capped at the Tansu value."""
    c = cfg.consumer
    if not cfg.broker.tansu_compat:
        return ConsumerTiming(c.session_timeout_s, c.heartbeat_interval_s, c.rebalance_timeout_s,
                              c.fetch_max_wait_s, False)
    return ConsumerTiming(
        session_timeout_s=min(c.session_timeout_s, TANSU_SESSION_TIMEOUT_S),
        heartbeat_interval_s=min(c.heartbeat_interval_s, TANSU_HEARTBEAT_INTERVAL_S),
        rebalance_timeout_s=min(c.rebalance_timeout_s, TANSU_REBALANCE_TIMEOUT_S),
        fetch_max_wait_s=min(c.fetch_max_wait_s, TANSU_FETCH_MAX_WAIT_S),
        tansu_compat=True,
    )


#: set once :func:`install_faust_compat` patched faust (once per process)
_INSTALLED = False

#: The timing of each faust app built by this project (apps not registered keep faust's behaviour).
_TIMINGS: weakref.WeakKeyDictionary[Any, ConsumerTiming] = weakref.WeakKeyDictionary()


def register_timing(app: Any, timing: ConsumerTiming) -> None:
    """Make the patched consumer of ``app`` use ``timing`` (see :func:`install_faust_compat`)."""
    _TIMINGS[app] = timing


def install_faust_compat() -> None:
    """Patch faust's aiokafka consumer thread once per process; the behaviour stays per app.

    Every faust app built by :func:`adrec_stream.stream.app.build_app` has its :class:`ConsumerTiming`
    registered with :func:`register_timing`. For such an app the worker consumer's fetch max-wait becomes
    ``fetch_max_wait_s`` (faust hard-codes 1.5 s), and with ``tansu_compat`` ``highwaters()`` returns
    ``max(end_offsets(), fetch high watermark)``. Apps not registered are unaffected.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    from faust.transport.drivers import aiokafka as drv  # noqa: PLC0415

    thread_cls = drv.AIOKafkaConsumerThread
    orig_create = thread_cls._create_worker_consumer
    orig_highwaters = thread_cls._highwaters

    def _create_worker_consumer(self, transport):  # type: ignore[no-untyped-def]
        consumer = orig_create(self, transport)
        timing = _TIMINGS.get(self.app)
        if timing is not None:
            consumer._fetch_max_wait_ms = int(timing.fetch_max_wait_s * 1000)
            from adrec_stream.logging import get_logger  # noqa: PLC0415

            get_logger("adrec_stream.compat").info(
                "consumer_timing", fetch_max_wait_ms=consumer._fetch_max_wait_ms,
                session_timeout_ms=consumer._session_timeout_ms, heartbeat_interval_ms=consumer._heartbeat_interval_ms,
                tansu_compat=timing.tansu_compat)
        return consumer

    async def _highwaters(self, partitions):  # type: ignore[no-untyped-def]
        listed = await orig_highwaters(self, partitions)
        timing = _TIMINGS.get(self.app)
        if timing is None or not timing.tansu_compat:
            return listed
        consumer = self._ensure_consumer()
        return merge_end_offsets(listed, {tp: consumer.highwater(tp) for tp in listed})

    thread_cls._create_worker_consumer = _create_worker_consumer
    thread_cls._highwaters = _highwaters
    _INSTALLED = True


async def rewind_to_log_start(consumer: Any, tp: Any) -> int:
    """Move a faust consumer's partition back to the start of its log and commit that offset.

    For a log cut back under the consumer (:meth:`~adrec_stream.ops.lag.ConsumerLag.past_log_end`). Faust's own
    bookkeeping of the partition (acknowledged offsets, gaps, read and committed offsets) is dropped first, as
    faust does when a partition is revoked, so that the records of the new log are read, acknowledged and
    committed from the start (faust never commits an offset below the one it committed last). The commit makes a
    restart resume there too.

    Args:
        consumer: ``app.consumer`` of a faust app.
        tp: the ``faust.types.TP``.

    Returns:
        The log start offset now consumed from.

    Raises:
        Exception: the broker could not be asked for the log start, or the commit failed (the caller retries at
            its next check).
    """
    start = int((await consumer.earliest_offsets(tp))[tp])
    for name in ("_gap", "_acked", "_acked_index", "_read_offset", "_committed_offset"):
        getattr(consumer, name).pop(tp, None)
    await consumer.seek(tp, start)
    await consumer._commit_offsets({tp: start})  # noqa: SLF001 - faust's commit path, updates its committed offset
    return start
