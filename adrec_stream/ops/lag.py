"""Consumer lag of one worker and the readiness checks built on it (no Kafka client here: the workers pass in the
offsets their client knows, so this is tested without a broker).

Lag of a partition = its log end offset (the high watermark of the last fetch response: right on Tansu, unlike
``ListOffsets``) minus the next offset this worker will process. The next offset is the one after the last record
the worker handled; for a partition it has handled nothing of since the assignment, the caller passes what its
client knows (the committed offset, else the fetch position).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from adrec_stream.ops.http import Check, LagTrend


class ConsumerLag:
    """Per-partition lag of one topic, the ``adrec_consumer_lag_records`` gauges and the lag's trend.

    Single writer (the worker's loop); :meth:`total`, :meth:`check` and the attributes may be read from the HTTP
    thread.

    Args:
        topic: the input topic.
        metrics: the worker's :class:`~adrec_stream.ops.metrics.WorkerMetrics` (None: not exported).
        clock: time source, seconds (monotonic).

    Attributes:
        assigned: partitions of ``topic`` assigned now (frozenset, replaced on every change).
        lags: partition -> lag (records) of the last :meth:`refresh`; partitions whose log end or position was
            unknown are absent.
        refreshed_at: clock time of the last :meth:`refresh` (None before the first).
        trend: the :class:`~adrec_stream.ops.http.LagTrend` of the total lag.
    """

    def __init__(self, topic: str, metrics: object | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic, self.metrics, self.clock = topic, metrics, clock
        self.trend = LagTrend(clock)
        self.assigned: frozenset[int] = frozenset()
        self.lags: dict[int, int] = {}
        self.refreshed_at: float | None = None
        self._next: dict[int, int] = {}
        self._cut_back_since: dict[int, tuple[float, int, int]] = {}  # partition -> (first seen, next, log end)

    def assign(self, partitions: Iterable[int]) -> None:
        """The partitions of the topic assigned now (the whole assignment); what was handled of partitions no longer
        assigned is forgotten (a later assignment starts again from the committed offset)."""
        self.assigned = frozenset(partitions)
        self._next = {p: o for p, o in self._next.items() if p in self.assigned}
        self._cut_back_since.clear()

    def revoke(self, partitions: Iterable[int]) -> None:
        """Partitions taken away (the rest stays assigned)."""
        self.assign(self.assigned - set(partitions))

    def handled(self, partition: int, offset: int) -> None:
        """The record at ``offset`` of ``partition`` was processed: the next one to process is ``offset + 1``."""
        if offset + 1 > self._next.get(partition, -1):
            self._next[partition] = offset + 1

    def past_log_end(self, log_end: Mapping[int, int | None], next_offsets: Mapping[int, int | None] | None = None,
                     *, confirm_s: float = 5.0) -> dict[int, tuple[int, int]]:
        """Assigned partitions whose next offset to process lies beyond their log end: the log was cut back under
        the consumer (broker restarted empty, topic deleted and recreated). A fetch there returns nothing (Tansu
        sends no ``OFFSET_OUT_OF_RANGE``) until the new log outgrows the old position, whose records would then be
        skipped.

        The consumer's cached high watermark can trail the records just handled (measured by a fresh user: next
        offset 16, cached log end 0, 80 ms after a reconnect), so a partition counts only once the same next offset
        and log end have stood for ``confirm_s`` seconds of successive calls (a live consumer's cache catches up
        with its next fetch, every ~0.1 s).

        Args:
            log_end: partition -> log end offset from the fetch responses (None: unknown).
            next_offsets: as in :meth:`refresh` (a committed offset past the end counts too: a worker restarted
                after the topic was recreated resumes there).
            confirm_s: seconds the condition must hold unchanged.

        Returns:
            partition -> (next offset, log end offset).
        """
        next_offsets = next_offsets or {}
        now = self.clock()
        out = {}
        for p in sorted(self.assigned):
            end, nxt = log_end.get(p), self._next.get(p, next_offsets.get(p))
            if end is None or nxt is None or nxt <= end:
                self._cut_back_since.pop(p, None)
                continue
            seen = self._cut_back_since.get(p)
            if seen is None or seen[1:] != (nxt, int(end)):
                self._cut_back_since[p] = (now, nxt, int(end))
            elif now - seen[0] >= confirm_s:
                out[p] = (nxt, int(end))
        return out

    def cut_back_refuted(self, partition: int) -> None:
        """A suspected cut-back was not confirmed: wait ``confirm_s`` again before the next suspicion counts."""
        self._cut_back_since.pop(partition, None)

    def restart_at(self, partition: int, offset: int) -> None:
        """The consumer was moved back to ``offset`` of ``partition`` (see :meth:`past_log_end`)."""
        self._next[partition] = offset
        self._cut_back_since.pop(partition, None)

    def unknown_next(self) -> list[int]:
        """Assigned partitions with nothing handled since the assignment (the caller looks up their committed
        offset or position for :meth:`refresh`)."""
        return sorted(p for p in self.assigned if p not in self._next)

    def refresh(self, log_end: Mapping[int, int | None], next_offsets: Mapping[int, int | None] | None = None
                ) -> dict[int, int]:
        """Recompute every assigned partition's lag, export the gauges and feed the trend.

        Args:
            log_end: partition -> log end offset (None: not known yet, e.g. before the first fetch response).
            next_offsets: partition -> next offset to process for partitions with nothing handled (committed
                offset or position; None: unknown).

        Returns:
            partition -> lag in records (>= 0) for the partitions where both numbers were known.
        """
        next_offsets = next_offsets or {}
        lags: dict[int, int] = {}
        for p in sorted(self.assigned):
            end = log_end.get(p)
            nxt = self._next.get(p, next_offsets.get(p))
            if end is None or nxt is None:
                continue
            lags[p] = max(0, int(end) - int(nxt))
        self.lags = lags
        self.refreshed_at = self.clock()
        self.trend.observe(sum(lags.values()))
        if self.metrics is not None:
            self.metrics.set_lag(self.topic, lags)
        return lags

    def total(self) -> int | None:
        """Sum of the last refresh's lags (None before the first refresh or when no partition's lag is known)."""
        lags = self.lags
        return sum(lags.values()) if lags else None

    def check(self, growth_limit_s: float, *, stale_after_s: float | None = None) -> tuple[bool, str]:
        """Readiness: not ready once the total lag has kept growing for more than ``growth_limit_s`` seconds, or
        (with ``stale_after_s``) when no refresh came for that many seconds (the worker's loop is stuck). The
        fine-tune worker passes no ``stale_after_s``: it does not read its topic while a round trains."""
        if (stale_after_s is not None and self.refreshed_at is not None
                and self.clock() - self.refreshed_at > stale_after_s):
            return False, (f"consumer lag of {self.topic} not refreshed for {self.clock() - self.refreshed_at:.0f} s "
                           "(worker loop blocked?)")
        growing = self.trend.growing_for_s()
        if growing > growth_limit_s:
            return False, (f"consumer lag of {self.topic} has kept growing for {growing:.0f} s (now {self.total()} "
                           f"records; limit ops.lag_growth_not_ready_s = {growth_limit_s:g} s)")
        return True, ""


def partitions_check(lag: ConsumerLag) -> Check:
    """Readiness: at least one partition of the input topic is assigned."""

    def check() -> tuple[bool, str]:
        if lag.assigned:
            return True, ""
        return False, f"no partitions of {lag.topic} assigned yet (joining the consumer group)"

    return check
