"""The Faust side of the operations endpoint of the ingest and score workers: their metrics, consumer lag and
readiness (:mod:`adrec_stream.ops`), wired to the app's rebalance signals and a 1-second timer.

Lag per assigned partition of the worker's input topic = the consumer's high watermark (``consumer.highwater``:
from the last fetch response, right on Tansu) minus the next offset to process: the one after the last record
the agent handled, or for a partition it has handled nothing of since the assignment, faust's committed offset,
else (no commit yet) the log start with ``auto_offset_reset: earliest`` or the fetch position otherwise.

A next offset beyond the log end means the log was cut back under the consumer (broker restarted empty without a
rebalance, topic recreated): Tansu answers such fetches with nothing, so the worker would wait silently and later
skip the new log's first records. Once it has stood unchanged for 5 s (:meth:`ConsumerLag.past_log_end`: the
cached high watermark can trail the records just handled) and a separate client confirms the log end, the refresh
logs ``log_cut_back_under_consumer``, lets the role react (the ingest worker forgets the partition's stored
offsets) and rewinds the partition to its log start (:func:`~adrec_stream.stream.compat.rewind_to_log_start`);
an unconfirmed one is logged as ``log_cut_back_not_confirmed`` and left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from adrec_stream.logging import get_logger
from adrec_stream.ops.http import Readiness
from adrec_stream.ops.lag import ConsumerLag, partitions_check
from adrec_stream.ops.metrics import WorkerMetrics
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.ingest import RESET_HINT

#: seconds between two lag refreshes (and the score worker's idle registry checks)
REFRESH_INTERVAL_S = 1.0

log = get_logger("adrec_stream.ops")


def faust_highwater(app: Any, topic: str, partition: int) -> int | None:
    """Log end offset of (topic, partition) from the app consumer's last fetch response; None while unknown (no
    fetch yet, partition not assigned, consumer not started)."""
    from faust.types import TP  # noqa: PLC0415

    try:
        hw = app.consumer.highwater(TP(topic, partition))
    except Exception:  # noqa: BLE001 - consumer not ready / partition not assigned
        return None
    return int(hw) if hw is not None and hw >= 0 else None


class FaustOps:
    """Metrics, lag and readiness of one Faust worker; :meth:`install` connects them to the app.

    Readiness checks: ``partitions`` (some partition of the input topic assigned) and ``lag``
    (:meth:`ConsumerLag.check` with ``ops.lag_growth_not_ready_s``; a lag not refreshed for that long also fails);
    the role adds its own (ingest: ``stores``, score: ``model``) with ``readiness.add``.

    Args:
        app: the ``faust.App``.
        cfg: the stream config (topics, ``ops`` section, consumer reset policy).
        role: "ingest" (input: clicks) or "score" (input: sequence updates).

    Attributes:
        metrics (:class:`~adrec_stream.ops.metrics.WorkerMetrics`), readiness
        (:class:`~adrec_stream.ops.http.Readiness`), lag (:class:`~adrec_stream.ops.lag.ConsumerLag`).
    """

    def __init__(self, app: Any, cfg: StreamConfig, role: str) -> None:
        self.app, self.cfg, self.role = app, cfg, role
        self.topic = cfg.topics.clicks.name if role == "ingest" else cfg.topics.sequence_updates.name
        self.metrics = WorkerMetrics(role, group=app.conf.id, recent_window_s=cfg.ops.recent_window_s)
        self.lag = ConsumerLag(self.topic, self.metrics)
        self.readiness = Readiness()
        limit = cfg.ops.lag_growth_not_ready_s
        self.readiness.add("partitions", partitions_check(self.lag))
        self.readiness.add("lag", lambda: self.lag.check(limit, stale_after_s=limit))
        self.metrics.watch_readiness(lambda: self.readiness.evaluate()["ready"])
        self._tasks: set[asyncio.Task] = set()
        self._on_refresh: list[Callable[[], Awaitable[None]]] = []
        self._on_cut_back: list[Callable[[int, int, int], Awaitable[None]]] = []

    def install(self) -> None:
        """Follow the app's assignment (rebalance signals) and refresh the lag every :data:`REFRESH_INTERVAL_S`."""
        app, topic = self.app, self.topic

        @app.on_partitions_assigned.connect
        async def _ops_assigned(sender: Any, assigned: Any, **_: Any) -> None:
            self.lag.assign(tp.partition for tp in assigned if tp.topic == topic)

        @app.on_partitions_revoked.connect
        async def _ops_revoked(sender: Any, revoked: Any, **_: Any) -> None:
            self.lag.revoke(tp.partition for tp in revoked if tp.topic == topic)

        @app.timer(interval=REFRESH_INTERVAL_S)
        async def _ops_refresh() -> None:
            await self.refresh()

    def on_refresh(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Also await ``callback()`` at every refresh (the score worker checks the registry while idle)."""
        self._on_refresh.append(callback)

    def handled(self, messages: Iterable[Any]) -> None:
        """Records (anything with ``partition`` and ``offset``) of the input topic that were processed."""
        for m in messages:
            self.lag.handled(m.partition, m.offset)

    async def refresh(self) -> None:
        """Recompute the lag of every assigned partition (see the module docstring), then run the callbacks."""
        from faust.types import TP  # noqa: PLC0415

        consumer = self.app.consumer
        ends = {p: faust_highwater(self.app, self.topic, p) for p in self.lag.assigned}
        start: dict[int, int | None] = {}
        for p in self.lag.unknown_next():
            start[p] = await self._next_offset(consumer, TP(self.topic, p))
        for p, (nxt, end) in self.lag.past_log_end(ends, start).items():
            rewound = await self._rewind(consumer, p, nxt, end)
            if rewound is not None:
                start[p] = rewound
        self.lag.refresh(ends, start)
        for callback in self._on_refresh:
            await callback()

    def on_log_cut_back(self, callback: Callable[[int, int, int], Awaitable[None]]) -> None:
        """Await ``callback(partition, next_offset, log_end)`` when a partition's log was found cut back under the
        consumer, before it is rewound (the ingest worker forgets that partition's stored offsets there)."""
        self._on_cut_back.append(callback)

    async def _rewind(self, consumer: Any, partition: int, nxt: int, end: int) -> int | None:
        """A log cut back under the consumer: tell the role, rewind to the log start (a failure: next refresh).
        Returns the offset consumed from now (None after a failure)."""
        from faust.types import TP  # noqa: PLC0415

        from adrec_stream.stream.compat import rewind_to_log_start  # noqa: PLC0415

        confirmed = await self._confirmed_end(partition)
        if confirmed is None or confirmed >= nxt:
            log.warning("log_cut_back_not_confirmed", role=self.role, topic=self.topic, partition=partition,
                        next_offset=nxt, cached_log_end_offset=end, log_end_offset=confirmed)
            self.lag.cut_back_refuted(partition)
            return None
        log.error("log_cut_back_under_consumer", role=self.role, topic=self.topic, partition=partition,
                  next_offset=nxt, log_end_offset=confirmed,
                  action="rewinding to the start of the new log and committing there", hint=RESET_HINT)
        try:
            for callback in self._on_cut_back:
                await callback(partition, nxt, confirmed)
            start = await rewind_to_log_start(consumer, TP(self.topic, partition))
        except Exception as err:  # noqa: BLE001 - broker unreachable / partition revoked meanwhile: next refresh
            log.warning("rewind_failed", role=self.role, topic=self.topic, partition=partition, error=repr(err)[:300])
            return None
        self.lag.restart_at(partition, start)
        log.info("rewound_to_log_start", role=self.role, topic=self.topic, partition=partition, offset=start)
        return start

    async def _confirmed_end(self, partition: int) -> int | None:
        """The partition's log end asked afresh by a separate client (:func:`~adrec_stream.broker.admin.
        true_end_offsets`), so that a stale cached high watermark never rewinds a partition; None if unreachable."""
        import functools  # noqa: PLC0415

        from adrec_stream.broker.admin import true_end_offsets  # noqa: PLC0415
        from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415
        from adrec_stream.broker.security import security_of  # noqa: PLC0415

        try:
            ends = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                true_end_offsets, effective_bootstrap(self.cfg), self.topic, compat=self.cfg.broker.tansu_compat,
                timeout_s=5.0, security=security_of(self.cfg)))
        except Exception as err:  # noqa: BLE001 - broker unreachable: the next refresh asks again
            log.warning("log_end_lookup_failed", role=self.role, topic=self.topic, error=str(err)[:300])
            return None
        return ends.get(partition)

    async def _next_offset(self, consumer: Any, tp: Any) -> int | None:
        committed = getattr(consumer, "_committed_offset", {}).get(tp)  # faust's own record of the group's commit
        if committed is not None:
            return int(committed)
        try:
            if self.cfg.consumer.auto_offset_reset == "earliest":
                return int((await consumer.earliest_offsets(tp))[tp])
            pos = await consumer.position(tp)
        except Exception:  # noqa: BLE001 - revoked meanwhile, consumer restarting: unknown this time
            return None
        return int(pos) if pos is not None else None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background (cancelled by :meth:`cancel_background`); a failure is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ops_task_failed", role=self.role, error=repr(task.exception()))

    def cancel_background(self) -> None:
        """Cancel what :meth:`spawn` started and has not finished."""
        for task in list(self._tasks):
            task.cancel()
