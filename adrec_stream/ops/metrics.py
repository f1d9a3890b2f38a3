"""The Prometheus metrics of the workers (``prometheus-client``; the exposition is the library's).

One :class:`WorkerMetrics` per worker process holds its own ``CollectorRegistry`` (so tests and benchmarks can
build several in one process) with the metrics of its role. Names follow the Prometheus conventions: counters
end in ``_total``, durations are ``_seconds``, sizes ``_bytes``, one unit per metric. Every metric and its
meaning is listed in docs/operations.md; :data:`METRIC_HELP` is the single source of the help texts.

"Last minute" figures (throughput, click -> recommendation quantiles) are gauges computed at scrape time over
``ops.recent_window_s`` (:class:`RecentEvents`, :class:`RecentValues`), so ``adrec-stream status`` can print them
from one scrape; a Prometheus server would use ``rate()`` and ``histogram_quantile()`` on the counters and the
histogram instead, which are exported as well.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from adrec_stream import __version__

disable_created_metrics()  # no ``*_created`` series: they double the exposition and no alert reads them

#: Roles that serve metrics.
ROLES = ("ingest", "score", "finetune")

#: Buckets of the click -> recommendation histogram, seconds (the latency goal is 0.1 s at p99).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Buckets of the batch-size histogram, records.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
#: Buckets of the batch-duration histogram, seconds.
BATCH_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: The quantiles of the recent click -> recommendation latency gauge.
RECENT_QUANTILES = (0.5, 0.95, 0.99)

#: name (without the ``_total`` a counter gets in the exposition) -> help text; docs/operations.md lists them.
METRIC_HELP: dict[str, str] = {
    "adrec_worker": "Worker identity: role, consumer group, package version",
    "adrec_ready": "1 when /readyz answers 200 (partitions assigned, store open, model loaded, lag not growing)",
    "adrec_records_consumed": "Records taken from the worker's input topic",
    "adrec_records_skipped": "Records consumed but not processed, by reason (tombstone, empty_key, bad_update)",
    "adrec_consumer_lag_records": "Records in the partition not yet processed by this worker (log end - next offset)",
    "adrec_batch_size_records": "Records per batch handed to the worker's handler",
    "adrec_batch_duration_seconds": "Seconds the handler spent on one batch",
    "adrec_events_last_minute_per_second": "Records consumed per second over the recent window (ops.recent_window_s)",
    "adrec_clicks_applied": "Clicks stored in the per-partition sequence stores (each click once)",
    "adrec_clicks_dead_lettered": "Malformed clicks sent to the dead-letter topic, by reason",
    "adrec_duplicates_skipped": "Re-delivered clicks skipped because their effect was already stored",
    "adrec_sequence_updates_published": "Sequence updates sent to the sequence-updates topic",
    "adrec_store_size_bytes": "Bytes on disk of the sequence store of a clicks partition open in this worker",
    "adrec_changelog_restored_records": "Changelog records read to restore assigned partitions' stores",
    "adrec_changelog_restore_seconds": "Wall seconds of the last changelog restore of an assigned partition",
    "adrec_recommendations": "Recommendation records sent to the recommendations topic",
    "adrec_recommendation_fallbacks": "Recommendations served by the fallback (no model yet, unknown history)",
    "adrec_users_scored": "Distinct user windows run through the model (below recommendations when de-duplicated)",
    "adrec_click_to_recommendation_seconds": "Seconds from the click's Kafka timestamp to its recommendation's emission",
    "adrec_click_to_recommendation_last_minute_seconds":
        "Quantiles of click -> recommendation seconds over the recent window (ops.recent_window_s)",
    "adrec_serving_model_version": "Registry version of the model serving now (-1: none loaded)",
    "adrec_serving_model_published_timestamp_seconds": "Unix time the serving version was published",
    "adrec_serving_model_age_seconds": "Seconds since the serving version was published",
    "adrec_model_reloads": "New model versions swapped in",
    "adrec_model_refusals": "Model versions that failed to load (the previous one kept serving)",
    "adrec_prequential_judged": "Clicks whose previous recommendation was judged against them (prequential)",
    "adrec_prequential_hits_at_10": "Judged clicks whose item was in the previous top-10 list",
    "adrec_prequential_hr_at_10": "Prequential HR@10 over the last ops.prequential_last_n judged clicks",
    "adrec_prequential_ndcg_at_10": "Prequential NDCG@10 over the last ops.prequential_last_n judged clicks",
    "adrec_prequential_window_judged": "Judged clicks in the window of the two gauges above (up to last_n)",
    "adrec_finetune_updates_consumed": "Sequence updates read by the fine-tune worker",
    "adrec_finetune_rounds": "Fine-tune rounds, by outcome (published, rejected)",
    "adrec_finetune_rejected": "Rejected fine-tune rounds, by reason",
    "adrec_finetune_heldout_ndcg_at_10": "Held-out NDCG@10 of the last round, by model (candidate, serving)",
    "adrec_finetune_round_seconds": "Wall seconds of the last fine-tune round",
    "adrec_finetune_published_version": "Registry version published by this worker's last published round (-1: none)",
}


class RecentEvents:
    """Counts of events in the last ``window_s`` seconds (1-second buckets), thread-safe.

    Args:
        window_s: window length, seconds.
        clock: time source (seconds); tests pass a fake one.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.window_s, self.clock = float(window_s), clock
        self._start = clock()
        self._buckets: deque[list[float]] = deque()  # [second, count]
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        """Count ``n`` events now."""
        sec = float(int(self.clock()))
        with self._lock:
            if self._buckets and self._buckets[-1][0] == sec:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([sec, float(n)])
            self._trim(sec)

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()

    def per_second(self) -> float:
        """Events per second over the window: events in it / ``window_s`` (in the first ``window_s`` after
        creation, / the seconds since creation, at least 1, so a new worker does not read low)."""
        with self._lock:
            now = self.clock()
            self._trim(now)
            return sum(c for _, c in self._buckets) / min(self.window_s, max(1.0, now - self._start))


class RecentValues:
    """Values observed in the last ``window_s`` seconds (at most ``max_values`` kept, oldest dropped first).

    Args:
        window_s: window length, seconds.
        max_values: memory bound (values, 16 bytes each).
        clock: time source (seconds).
    """

    def __init__(self, window_s: float, max_values: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        self.window_s, self.clock = float(window_s), clock
        self._values: deque[tuple[float, float]] = deque(maxlen=max_values)
        self._lock = threading.Lock()

    def add_many(self, values: Iterable[float]) -> None:
        """Observe ``values`` now."""
        now = self.clock()
        with self._lock:
            self._values.extend((now, float(v)) for v in values)

    def quantiles(self, qs: Iterable[float]) -> dict[float, float] | None:
        """``{q: value}`` over the window (linear interpolation), None when the window is empty."""
        with self._lock:
            cutoff = self.clock() - self.window_s
            while self._values and self._values[0][0] <= cutoff:
                self._values.popleft()
            vals = np.fromiter((v for _, v in self._values), dtype=np.float64, count=len(self._values))
        if vals.size == 0:
            return None
        qs = list(qs)
        return dict(zip(qs, (float(x) for x in np.quantile(vals, qs))))


class _ScrapeTimeCollector:
    """A custom collector whose families are built at scrape time by ``build()``."""

    def __init__(self, build: Callable[[], Iterable[Any]]) -> None:
        self.build = build

    def collect(self) -> Iterator[Any]:
        yield from self.build()

    def describe(self) -> list[Any]:
        return []  # unchecked: the families are only known at scrape time


def dir_size_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class WorkerMetrics:
    """The metrics of one worker process (see :data:`METRIC_HELP` and docs/operations.md).

    Args:
        role: "ingest", "score" or "finetune"; only that role's metrics are registered (the others are None).
        group: the worker's consumer group (a label of ``adrec_worker_info``).
        recent_window_s: window of the "last minute" gauges, seconds.
        clock: time source of the recent windows.

    Attributes (role in brackets): ``consumed``, ``skipped`` (reason), ``lag`` (topic, partition),
    ``batch_size``, ``batch_duration``, ``recent_events`` [all]; ``applied``, ``dead_lettered`` (reason),
    ``duplicates``, ``updates_published`` [ingest]; ``recommendations``, ``fallbacks``, ``users_scored``,
    ``latency``, ``recent_latency``, ``serving_version``, ``serving_published_ts``, ``reloads``, ``refusals``,
    ``preq_judged``, ``preq_hits`` [score]; ``ft_updates``, ``ft_rounds`` (outcome), ``ft_rejected`` (reason),
    ``ft_heldout`` (model), ``ft_round_seconds``, ``ft_published_version`` [finetune].

    Raises:
        ValueError: unknown role.
    """

    def __init__(self, role: str, *, group: str = "", recent_window_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        r, h = self.registry, METRIC_HELP
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        Info("adrec_worker", h["adrec_worker"], registry=r).info(
            {"role": role, "group": group, "version": __version__, "pid": str(os.getpid())})
        self.ready = Gauge("adrec_ready", h["adrec_ready"], registry=r)
        self.consumed = Counter("adrec_records_consumed", h["adrec_records_consumed"], registry=r)
        self.skipped = Counter("adrec_records_skipped", h["adrec_records_skipped"], ["reason"], registry=r)
        self.lag = Gauge("adrec_consumer_lag_records", h["adrec_consumer_lag_records"], ["topic", "partition"],
                         registry=r)
        self.batch_size = Histogram("adrec_batch_size_records", h["adrec_batch_size_records"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_duration = Histogram("adrec_batch_duration_seconds", h["adrec_batch_duration_seconds"],
                                        buckets=BATCH_DURATION_BUCKETS_S, registry=r)
        self.recent_events = RecentEvents(recent_window_s, clock)
        Gauge("adrec_events_last_minute_per_second", h["adrec_events_last_minute_per_second"],
              registry=r).set_function(self.recent_events.per_second)
        self.applied = self.dead_lettered = self.duplicates = self.updates_published = None
        self.restored_records = self.restore_seconds = None
        self.recommendations = self.fallbacks = self.users_scored = self.latency = None
        self.recent_latency: RecentValues | None = None
        self.serving_version = self.serving_published_ts = self.reloads = self.refusals = None
        self.preq_judged = self.preq_hits = None
        self.ft_updates = self.ft_rounds = self.ft_rejected = self.ft_heldout = None
        self.ft_round_seconds = self.ft_published_version = None
        self._store_paths: Callable[[], Iterable[tuple[str, int, Path]]] = lambda: ()
        self._prequential: Callable[[], tuple[float, float, int] | None] = lambda: None
        self._synced: dict[tuple[str, tuple[str, ...]], int] = {}
        getattr(self, f"_register_{role}")()

    # ------------------------------------------------------------------------------------------ per role
    def _register_ingest(self) -> None:
        r, h = self.registry, METRIC_HELP
        self.applied = Counter("adrec_clicks_applied", h["adrec_clicks_applied"], registry=r)
        self.dead_lettered = Counter("adrec_clicks_dead_lettered", h["adrec_clicks_dead_lettered"], ["reason"],
                                     registry=r)
        self.duplicates = Counter("adrec_duplicates_skipped", h["adrec_duplicates_skipped"], registry=r)
        self.updates_published = Counter("adrec_sequence_updates_published", h["adrec_sequence_updates_published"],
                                         registry=r)
        self.restored_records = Counter("adrec_changelog_restored_records", h["adrec_changelog_restored_records"],
                                        registry=r)
        self.restore_seconds = Gauge("adrec_changelog_restore_seconds", h["adrec_changelog_restore_seconds"],
                                     registry=r)
        for reason in ("tombstone", "empty_key"):
            self.skipped.labels(reason)  # known reasons are exported from the start (0), so rate() sees them
        r.register(_ScrapeTimeCollector(self._store_sizes))

    def _register_score(self) -> None:
        r, h = self.registry, METRIC_HELP
        self.recommendations = Counter("adrec_recommendations", h["adrec_recommendations"], registry=r)
        self.fallbacks = Counter("adrec_recommendation_fallbacks", h["adrec_recommendation_fallbacks"], registry=r)
        self.users_scored = Counter("adrec_users_scored", h["adrec_users_scored"], registry=r)
        self.latency = Histogram("adrec_click_to_recommendation_seconds", h["adrec_click_to_recommendation_seconds"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.recent_latency = RecentValues(self.recent_events.window_s, clock=self.recent_events.clock)
        self.serving_version = Gauge("adrec_serving_model_version", h["adrec_serving_model_version"], registry=r)
        self.serving_version.set(-1)
        self.serving_published_ts = Gauge("adrec_serving_model_published_timestamp_seconds",
                                          h["adrec_serving_model_published_timestamp_seconds"], registry=r)
        Gauge("adrec_serving_model_age_seconds", h["adrec_serving_model_age_seconds"], registry=r).set_function(
            self._serving_age)
        self.reloads = Counter("adrec_model_reloads", h["adrec_model_reloads"], registry=r)
        self.refusals = Counter("adrec_model_refusals", h["adrec_model_refusals"], registry=r)
        self.preq_judged = Counter("adrec_prequential_judged", h["adrec_prequential_judged"], registry=r)
        self.preq_hits = Counter("adrec_prequential_hits_at_10", h["adrec_prequential_hits_at_10"], registry=r)
        self.skipped.labels("bad_update")
        r.register(_ScrapeTimeCollector(self._score_recent))

    def _register_finetune(self) -> None:
        r, h = self.registry, METRIC_HELP
        self.ft_updates = Counter("adrec_finetune_updates_consumed", h["adrec_finetune_updates_consumed"], registry=r)
        self.ft_rounds = Counter("adrec_finetune_rounds", h["adrec_finetune_rounds"], ["outcome"], registry=r)
        for outcome in ("published", "rejected"):
            self.ft_rounds.labels(outcome)
        self.skipped.labels("bad_update")
        self.ft_rejected = Counter("adrec_finetune_rejected", h["adrec_finetune_rejected"], ["reason"], registry=r)
        self.ft_heldout = Gauge("adrec_finetune_heldout_ndcg_at_10", h["adrec_finetune_heldout_ndcg_at_10"],
                                ["model"], registry=r)
        self.ft_round_seconds = Gauge("adrec_finetune_round_seconds", h["adrec_finetune_round_seconds"], registry=r)
        self.ft_published_version = Gauge("adrec_finetune_published_version", h["adrec_finetune_published_version"],
                                          registry=r)
        self.ft_published_version.set(-1)

    # ------------------------------------------------------------------------------- scrape-time sources
    def watch_stores(self, paths: Callable[[], Iterable[tuple[str, int, Path]]]) -> None:
        """Ingest: ``paths()`` -> (topic, partition, store folder) of the stores open now (sized at scrape)."""
        self._store_paths = paths

    def watch_readiness(self, ready: Callable[[], bool]) -> None:
        """``adrec_ready`` reads ``ready()`` at scrape time (e.g. ``lambda: readiness.evaluate()["ready"]``), so the
        gauge and ``/readyz`` always agree."""
        self.ready.set_function(lambda: float(bool(ready())))

    def watch_prequential(self, window: Callable[[], tuple[float, float, int] | None]) -> None:
        """Score: ``window()`` -> (HR@10, NDCG@10, judged) over the last N judged clicks, or None."""
        self._prequential = window

    def _store_sizes(self) -> Iterator[Any]:
        fam = GaugeMetricFamily("adrec_store_size_bytes", METRIC_HELP["adrec_store_size_bytes"],
                                labels=["topic", "partition"])
        for topic, part, path in self._store_paths():
            fam.add_metric([topic, str(part)], dir_size_bytes(path))
        yield fam

    def _serving_age(self) -> float:
        ts = self.serving_published_ts._value.get() if self.serving_published_ts is not None else 0.0
        return max(0.0, time.time() - ts) if ts > 0 else float("nan")

    def _score_recent(self) -> Iterator[Any]:
        fam = GaugeMetricFamily("adrec_click_to_recommendation_last_minute_seconds",
                                METRIC_HELP["adrec_click_to_recommendation_last_minute_seconds"], labels=["quantile"])
        qs = self.recent_latency.quantiles(RECENT_QUANTILES) if self.recent_latency is not None else None
        for q in RECENT_QUANTILES:
            fam.add_metric([str(q)], qs[q] if qs else float("nan"))
        yield fam
        pq = self._prequential()
        hr, ndcg, n = pq if pq is not None else (float("nan"), float("nan"), 0)
        yield GaugeMetricFamily("adrec_prequential_hr_at_10", METRIC_HELP["adrec_prequential_hr_at_10"], value=hr)
        yield GaugeMetricFamily("adrec_prequential_ndcg_at_10", METRIC_HELP["adrec_prequential_ndcg_at_10"], value=ndcg)
        yield GaugeMetricFamily("adrec_prequential_window_judged", METRIC_HELP["adrec_prequential_window_judged"],
                                value=n)

    # --------------------------------------------------------------------------------------- recording
    def sync(self, counter: Counter, total: int, *labels: str) -> None:
        """Raise ``counter`` (the child of ``labels``, if any) to ``total``, a running total kept elsewhere.

        The workers count in one place (:class:`~adrec_stream.stream.handler_support.WorkerStats`,
        :class:`~adrec_stream.incremental.worker.FinetuneCounters`, the recommender's reload counters) and mirror
        those totals here after each batch, so the counters never disagree with the logged figures. A total
        below the one synced before is ignored (counters never go down). Call from one thread.

        Args:
            counter: one of this object's counters.
            total: the running total (events).
            labels: label values of a labelled counter, in the counter's label order.
        """
        key = (counter._name, labels)
        delta = int(total) - self._synced.get(key, 0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._synced[key] = int(total)

    def observe_restore(self, records: int, seconds: float) -> None:
        """Ingest: one partition store restored from the changelog (``records`` read in ``seconds`` s)."""
        self.restored_records.inc(records)
        self.restore_seconds.set(seconds)

    def observe_batch(self, n_records: int, seconds: float) -> None:
        """One handler batch of ``n_records`` records that took ``seconds``: the batch histograms and the recent
        throughput (``adrec_records_consumed_total`` itself is synced from the worker's counts, :meth:`sync`)."""
        self.recent_events.add(n_records)
        self.batch_size.observe(n_records)
        self.batch_duration.observe(seconds)

    def observe_latencies(self, seconds: Iterable[float]) -> None:
        """Score: click -> recommendation latencies of one batch, seconds."""
        vals = [s for s in seconds if s == s and s >= 0]
        for s in vals:
            self.latency.observe(s)
        self.recent_latency.add_many(vals)

    def set_serving(self, version: int | None, published_ts: float | None) -> None:
        """Score: the model version serving now and its publication time (Unix seconds)."""
        self.serving_version.set(-1 if version is None else version)
        self.serving_published_ts.set(published_ts or 0.0)

    def set_lag(self, topic: str, lags: dict[int, int]) -> None:
        """Consumer lag per partition of ``topic`` (records); partitions not in ``lags`` are removed."""
        current = {labels for labels in self._lag_labels() if labels[0] == topic}
        for p, lag in lags.items():
            self.lag.labels(topic, str(p)).set(lag)
        for labels in current - {(topic, str(p)) for p in lags}:
            self.lag.remove(*labels)

    def _lag_labels(self) -> list[tuple[str, str]]:
        return [tuple(s.labels[k] for k in ("topic", "partition"))
                for m in self.lag.collect() for s in m.samples]
