"""Streaming benchmarks through the real embedded broker: ingest throughput and click -> recommendation latency.

- :func:`bench_ingest`: N clicks of a real log are produced to the clicks topic first; then, side by side in one
  run, a plain batched consumer reads them (``raw_consume_events_per_s``: aiokafka ``getmany`` + the click
  decoder, the ceiling) and the ingest worker processes apply them to RocksDB (``events_per_s``, for 1 and 2
  workers on one host). A worker's rate is measured on the sequence updates it published: the updates of every
  batch after the first / (last ``ingest_ts`` - first ``ingest_ts``), i.e. steady state after the group join.
- :func:`bench_latency`: ingest and score workers with the demo's ADRec model (MovieLens 100K, trained or taken
  from the demo cache), users bootstrapped with their history; clicks of the held-out part are produced at fixed
  rates for ``duration_s`` each; latency = arrival of the recommendation at a consumer - the click record's Kafka
  timestamp (the producer's clock, same host), split into the hops of :data:`LATENCY_HOPS` by the times each
  recommendation carries.

Both print one JSON object; figures are noisy on a shared machine, so the load average is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from adrec_stream.bench.common import load_avg_1m, machine_info, process_cpu_s, sig
from adrec_stream.logging import get_logger

log = get_logger("adrec_stream.bench.stream")


class _Pipeline(contextlib.ExitStack):
    """An embedded broker (own port) and worker processes under ``run_dir``; everything stops on exit."""

    def __init__(self, run_dir: Path, overrides: dict[str, Any]) -> None:
        super().__init__()
        from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415
        from adrec_stream.stream.local import run_dir_overrides  # noqa: PLC0415

        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        self.run_dir = run_dir
        self.scfg = load_stream_config(None, {**run_dir_overrides(run_dir), **overrides})
        self.workers: list = []

    def start_broker(self) -> str:
        """Start the run's broker (stopped on exit) and write the workers' config; returns the bootstrap address."""
        from adrec_stream.stream.local import start_pipeline_broker  # noqa: PLC0415

        self.scfg, bootstrap = start_pipeline_broker(self, self.scfg, self.run_dir / "stream.yaml")
        return bootstrap

    def start_workers(self, roles: list[str], timeout_s: float = 120.0) -> float:
        """Start one worker process per entry of ``roles``; returns seconds until all joined their groups."""
        from adrec_stream.stream.local import READY_MARKERS, WorkerProcess, wait_ready  # noqa: PLC0415

        (self.run_dir / "logs").mkdir(exist_ok=True)
        new = []
        for i, role in enumerate(roles):
            w = WorkerProcess(role, self.run_dir / "stream.yaml", self.run_dir / "logs", [],
                              log_name=f"{role}-{len(self.workers) + i}")
            self.callback(w.stop)
            w.start()
            new.append(w)
        self.workers += new
        return wait_ready(new, READY_MARKERS, timeout_s)


def _clicks_from(data: str, n: int) -> list:
    """``n`` clicks from the log at ``data`` (cycled with fresh event ids when the log is shorter)."""
    from adrec_stream.data.events import read_interactions  # noqa: PLC0415
    from adrec_stream.stream.replay import select_clicks  # noqa: PLC0415

    base = select_clicks(read_interactions(data), Path(data).name)
    return [c._replace(event_id=f"{c.event_id}#{i // len(base)}") for i, c in
            ((i, base[i % len(base)]) for i in range(n))]


@contextlib.asynccontextmanager
async def _from_start(bootstrap: str, topic: str, partitions: int, **consumer_kw: Any) -> AsyncIterator[Any]:
    """A started aiokafka consumer without a group, assigned every partition of ``topic`` at its beginning."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=100, **consumer_kw)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        yield consumer
    finally:
        await consumer.stop()


async def _raw_consume(bootstrap: str, topic: str, partitions: int, n: int,
                       max_records: int = 10_000) -> tuple[float, int]:
    """(seconds, records read) of a plain batched consumer fetching and decoding ``n`` records of ``topic`` from the
    start, ``max_records`` per fetch."""
    from adrec_stream.stream.events import DecodeError, decode_click  # noqa: PLC0415

    async with _from_start(bootstrap, topic, partitions, max_partition_fetch_bytes=4 * 1024 * 1024) as consumer:
        got, decoded, t0 = 0, 0, time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            for msgs in batch.values():
                for m in msgs:
                    with contextlib.suppress(DecodeError):
                        decode_click(m.value, m.key)
                    decoded += 1
                got += len(msgs)
        return time.perf_counter() - t0, decoded


async def first_seen_span(bootstrap: str, topic: str, partitions: int, n: int, timeout_s: float,
                          entries: Callable[[Any], Iterable[tuple[Any, float]]]) -> tuple[int, int, float]:
    """Read ``topic`` from the start until ``n`` distinct ids arrived (or ``timeout_s`` without progress); each
    record's JSON value gives (id, time in s) pairs through ``entries``, and an id counts once, at its earliest time.

    Returns:
        (distinct ids, those whose time is after the first time, last - first time in s): a batch's records share
        one time, so the steady-state rate is the records of the later batches over the span.
    """
    import orjson  # noqa: PLC0415

    async with _from_start(bootstrap, topic, partitions) as consumer:
        seen: dict[Any, float] = {}
        last_progress = time.time()
        while len(seen) < n and time.time() - last_progress < timeout_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for msgs in batch.values():
                for m in msgs:
                    for key, t in entries(orjson.loads(m.value)):
                        seen[key] = min(t, seen.get(key, t))
                last_progress = time.time() if msgs else last_progress
    ts = list(seen.values())
    if not ts:
        return 0, 0, 0.0
    first = min(ts)
    return len(ts), sum(t > first for t in ts), max(ts) - first


async def _updates_span(bootstrap: str, topic: str, partitions: int, n: int,
                        timeout_s: float) -> tuple[int, int, float]:
    """:func:`first_seen_span` of the sequence updates by event id and ``ingest_ts`` (a batch's updates share one
    ``ingest_ts``, its planning time: the first batch's are planned at its start, the last one's work ends after
    it)."""
    return await first_seen_span(bootstrap, topic, partitions, n, timeout_s,
                                 lambda u: ((u["event_id"], u["ingest_ts"]),))


def bench_ingest(data: str, *, events: int, workers: tuple[int, ...] = (1, 2), run_root: Path,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ingest throughput through the real broker into RocksDB against a plain batched consumer (module docstring).

    Returns:
        JSON-able dict: ``events``, ``raw_consume_events_per_s``, ``runs`` [{workers, events_per_s, applied,
        wall_s}], ``events_per_s`` (best run), ``ratio_to_raw`` and the machine.
    """
    from adrec_stream.stream.replay import produce_clicks  # noqa: PLC0415

    info = {"machine": machine_info(), "load_avg_start": load_avg_1m(), "data": data, "events": events}
    clicks = _clicks_from(data, events)
    runs = []
    raw_s = None
    for n_workers in workers:
        with _Pipeline(run_root / f"ingest-{n_workers}", overrides or {}) as pipe:
            bootstrap = pipe.start_broker()
            t = pipe.scfg.topics
            asyncio.run(produce_clicks(bootstrap, t.clicks.name, clicks, progress=False))
            if raw_s is None:
                raw_s, _ = asyncio.run(_raw_consume(bootstrap, t.clicks.name, t.clicks.partitions, events))
            t0 = time.perf_counter()
            pipe.start_workers(["ingest"] * n_workers)
            n, later, span = asyncio.run(_updates_span(bootstrap, t.sequence_updates.name,
                                                       t.sequence_updates.partitions, events, timeout_s=30.0))
            runs.append({"workers": n_workers, "applied": n, "events_per_s": sig(later / span) if span > 0 else None,
                         "wall_s": sig(time.perf_counter() - t0), "load_avg": load_avg_1m()})
            log.info("bench_ingest_run", **runs[-1])
    best = max((r["events_per_s"] or 0.0) for r in runs)
    raw = events / raw_s if raw_s else None
    return {**info, "raw_consume_events_per_s": sig(raw) if raw else None, "runs": runs, "events_per_s": best,
            "ratio_to_raw": sig(best / raw) if raw else None, "goal_events_per_s": 20_000,
            "goal_met": best >= 20_000, "load_avg_end": load_avg_1m()}


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def _rate_phase(bootstrap: str, scfg: Any, clicks: list, rate: float, drain_s: float) -> dict[str, Any]:
    """Produce ``clicks`` at ``rate``/s and collect their recommendations; latency figures in ms."""
    from adrec_stream.stream.local import OutputCollector  # noqa: PLC0415
    from adrec_stream.stream.replay import produce_clicks  # noqa: PLC0415

    wanted = {c.event_id for c in clicks}
    async with OutputCollector(bootstrap, scfg, client_id="adrec-bench-latency", fetch_max_wait_ms=5) as out:
        await out.poll(timeout_ms=50)
        stop = asyncio.Event()

        async def collect() -> None:
            while not stop.is_set():
                await out.poll(timeout_ms=20)

        task = asyncio.create_task(collect())
        t0 = time.time()
        res = await produce_clicks(bootstrap, scfg.topics.clicks.name, clicks, rate_per_s=rate, progress=False)
        deadline = time.time() + drain_s
        while time.time() < deadline and len(wanted & out.recs.keys()) < len(wanted):
            await asyncio.sleep(0.05)
        stop.set()
        await task
    got = [out.recs[e] for e in wanted if e in out.recs]
    lat = [1000 * (r["received_ts"] - r["produced_ts"]) for r in got if r.get("produced_ts")]
    end = max((r["received_ts"] for r in got), default=t0)
    return {"rate": rate, "sent": res.sent, "achieved_rate": sig(res.rate_per_s), "answered": len(got),
            "p50_ms": sig(_percentile(lat, 50)) if lat else None, "p95_ms": sig(_percentile(lat, 95)) if lat else None,
            "p99_ms": sig(_percentile(lat, 99)) if lat else None, "hops": latency_hops(got),
            "recs_per_s": sig(len(got) / max(end - t0, 1e-9)), "load_avg": load_avg_1m()}


#: the hops of the click -> recommendation path: (name, from field, to field) of the recommendation record
LATENCY_HOPS = (
    ("ingest", "produced_ts", "ingest_ts"),  # clicks fetch + waiting for the ingest batch + decode and plan
    ("to_scoring", "ingest_ts", "scoring_start_ts"),  # update produce + fetch + waiting for the score worker
    ("scoring", "scoring_start_ts", "emitted_ts"),  # the score batch: parse, model, encode
    ("delivery", "emitted_ts", "received_ts"),  # recommendation produce + the reader's fetch
)


def latency_hops(recs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """p50 / p99 (ms) of each hop of :data:`LATENCY_HOPS` over the recommendation records that carry both times.

    Args:
        recs: recommendation values (``adrec_stream.stream.score``) with the collector's ``received_ts`` added.

    Returns:
        ``{hop: {"p50_ms", "p99_ms", "n"}}``; percentiles are None for a hop no record carries. The p99s of the hops
        need not add up to the end-to-end p99 (different records are slow in different hops).
    """
    out = {}
    for name, start, stop in LATENCY_HOPS:
        xs = [1000 * (r[stop] - r[start]) for r in recs
              if isinstance(r.get(start), int | float) and isinstance(r.get(stop), int | float)]
        out[name] = {"p50_ms": sig(_percentile(xs, 50)) if xs else None,
                     "p99_ms": sig(_percentile(xs, 99)) if xs else None, "n": len(xs)}
    return out


def bench_latency(data: str, *, rates: tuple[float, ...] = (100, 500, 1000), duration_s: float = 60.0,
                  search_rates: tuple[float, ...] = (1500, 2000, 3000, 4000), search_duration_s: float = 30.0,
                  score_workers: int = 1, fresh_broker_per_rate: bool = False, run_root: Path,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Click -> recommendation latency at fixed rates, and the highest rate sustained with p99 <= 250 ms.

    Args:
        score_workers: score worker processes in the scoring consumer group (one ingest worker).
        fresh_broker_per_rate: run every rate on its own pipeline (new embedded broker, state and workers) instead
            of all rates, one after the other, on one. The embedded broker's CPU per record grows with the record
            batches it holds (docs/benchmarks.md), so on a shared pipeline a rate pays for the earlier rates' data.

    Returns:
        JSON-able dict: ``rates`` [{rate, p50_ms, p95_ms, p99_ms, hops, recs_per_s, answered, sent,
        broker_cpu_s_per_s, ...}] (``hops``: p50 / p99 of each hop of the path, :func:`latency_hops`;
        ``broker_cpu_s_per_s``: the broker process's CPU seconds per second during the rate), ``ready_s`` (one
        entry per pipeline started), ``max_rate_p99_250ms`` (the highest tried rate with every click answered and
        p99 <= 250 ms), the goal check (p99 <= 100 ms at 500 clicks/s) and the machine.
    """
    from adrec_stream.config import load_config  # noqa: PLC0415
    from adrec_stream.data.events import chronological_split, read_interactions  # noqa: PLC0415
    from adrec_stream.demo import DEFAULT_DEMO_CONFIG, DemoConfig, prepare_model  # noqa: PLC0415
    from adrec_stream.serving.registry import ModelRegistry  # noqa: PLC0415
    from adrec_stream.stream.local import bootstrap_state  # noqa: PLC0415
    from adrec_stream.stream.replay import select_clicks  # noqa: PLC0415

    info = {"machine": machine_info(), "load_avg_start": load_avg_1m(), "data": data,
            "fresh_broker_per_rate": fresh_broker_per_rate}
    dcfg = load_config(DEFAULT_DEMO_CONFIG, DemoConfig)
    inter = read_interactions(data)
    train, rest = chronological_split(inter, dcfg.train_fraction)
    ckpt, facts = prepare_model(dcfg, train, Path(data))
    held = select_clicks(rest, Path(data).name)
    phases, out, ready = list(rates) + list(search_rates), [], []

    def start(run_dir: Path) -> tuple[_Pipeline, str, int]:
        pipe = _Pipeline(run_dir, {"registry_poll_s": 1.0, **(overrides or {})})
        try:
            bootstrap = pipe.start_broker()
            bootstrap_state(pipe.scfg, train, Path(data).name)
            ModelRegistry(pipe.scfg.registry_dir).publish(ckpt, meta={"source": "bench latency"})
            ready.append(sig(pipe.start_workers(["ingest"] + ["score"] * score_workers)))
            return pipe, bootstrap, int(Path(pipe.scfg.broker.pid_file).read_text())
        except BaseException:
            pipe.close()
            raise

    with contextlib.ExitStack() as stack:
        pipe = None
        cursor = 0
        for i, rate in enumerate(phases):
            if pipe is None or fresh_broker_per_rate:
                stack.close()
                pipe, bootstrap, broker_pid = start(run_root / "latency" / (f"rate-{i}" if fresh_broker_per_rate
                                                                             else "all"))
                stack.enter_context(pipe)
            search = i >= len(rates)
            n = int(rate * (search_duration_s if search else duration_s))
            clicks = [held[(cursor + j) % len(held)]._replace(event_id=f"r{i}:{j}") for j in range(n)]
            cursor += n
            cpu0, t0 = process_cpu_s(broker_pid), time.perf_counter()
            res = asyncio.run(_rate_phase(bootstrap, pipe.scfg, clicks, rate, drain_s=30.0))
            cpu1 = process_cpu_s(broker_pid)
            res["broker_cpu_s_per_s"] = (sig((cpu1 - cpu0) / (time.perf_counter() - t0))
                                         if cpu0 is not None and cpu1 is not None else None)
            res["phase"] = "search" if search else "fixed"
            out.append(res)
            log.info("bench_latency_phase", **res)
            ok = res["answered"] == res["sent"] and res["p99_ms"] is not None and res["p99_ms"] <= 250
            if search and not ok:
                break
    fixed = [r for r in out if r["phase"] == "fixed"]
    passing = [r["rate"] for r in out if r["answered"] == r["sent"] and (r["p99_ms"] or 1e9) <= 250]
    at500 = next((r for r in fixed if r["rate"] == 500), None)
    return {**info, "ready_s": ready, "score_workers": score_workers,
            "model": {k: facts.get(k) for k in ("train_events", "items", "cached")},
            "rates": fixed, "search": [r for r in out if r["phase"] == "search"],
            "max_rate_p99_250ms": max(passing, default=None),
            "goal": {"rate": 500, "p99_ms_max": 100, "met": bool(at500 and at500["answered"] == at500["sent"]
                                                                  and (at500["p99_ms"] or 1e9) <= 100)},
            "load_avg_end": load_avg_1m()}


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a running process in MiB, from ``/proc/<pid>/status`` (None if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def bench_memory(*, users: int = 100_000, items: int = 100_000, clicks_per_user: int = 2, score_updates: int = 5_000,
                 run_root: Path, seed: int = 2025, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Peak RSS of an ingest worker holding ``users`` users and of a score worker serving an ``items``-item model.

    Synthetic clicks (user ``u<k>``, items drawn uniformly from 1..``items``) are produced first; one ingest worker
    applies them all, and a score worker with a freshly initialised ADRec over ``items`` items (default config)
    scores the resulting sequence updates until ``score_updates`` recommendations arrived. Peak RSS is each
    process's ``VmHWM`` just before it is stopped.

    Returns:
        JSON-able dict: ``ingest_peak_rss_mb``, ``score_peak_rss_mb``, ``users``, ``items``, ``clicks`` and the machine.
    """
    import random  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from adrec_stream.bench.common import fresh_model  # noqa: PLC0415
    from adrec_stream.data.events import Interaction  # noqa: PLC0415
    from adrec_stream.model import ModelConfig, save_checkpoint  # noqa: PLC0415
    from adrec_stream.serving.registry import ModelRegistry  # noqa: PLC0415
    from adrec_stream.stream.local import OutputCollector  # noqa: PLC0415
    from adrec_stream.stream.replay import produce_clicks  # noqa: PLC0415

    rng = random.Random(seed)
    n = users * clicks_per_user
    clicks = [Interaction(f"u{i % users}", str(rng.randint(1, items)), 1_700_000_000.0 + i, f"m{i}") for i in range(n)]
    info = {"machine": machine_info(), "load_avg_start": load_avg_1m(), "users": users, "items": items, "clicks": n}
    with _Pipeline(run_root / "memory", {"registry_poll_s": 1.0, **(overrides or {})}) as pipe:
        bootstrap = pipe.start_broker()
        cfg = ModelConfig()
        model = fresh_model(items, cfg, seed, torch.device("cpu")).eval()
        ckpt = save_checkpoint(pipe.run_dir / "synthetic" / "model.pt", model, vocab=[str(i) for i in range(1, items + 1)],
                               config={"model": cfg.model_dump(mode="json")}, meta={"source": "bench memory"})
        ModelRegistry(pipe.scfg.registry_dir).publish(ckpt, meta={"source": "bench memory"})
        del model
        asyncio.run(produce_clicks(bootstrap, pipe.scfg.topics.clicks.name, clicks, progress=False))
        t = pipe.scfg.topics
        pipe.start_workers(["ingest", "score"], timeout_s=300.0)

        async def wait_scored() -> int:
            async with OutputCollector(bootstrap, pipe.scfg, client_id="adrec-bench-memory") as out:
                last = time.time()
                while len(out.recs) < score_updates and time.time() - last < 60:
                    if await out.poll():
                        last = time.time()
                return len(out.recs)

        scored = asyncio.run(wait_scored())
        applied, _ = asyncio.run(_updates_span(bootstrap, t.sequence_updates.name, t.sequence_updates.partitions, n,
                                               timeout_s=60.0))
        ingest, score = pipe.workers
        info.update(ingest_applied=applied, recommendations=scored,
                    ingest_peak_rss_mb=_peak_rss_mb(ingest.proc.pid), score_peak_rss_mb=_peak_rss_mb(score.proc.pid),
                    load_avg_end=load_avg_1m())
    return info
