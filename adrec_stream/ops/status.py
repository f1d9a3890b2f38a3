"""``adrec-stream status``: one snapshot of a running deployment, read from the workers' metrics endpoints.

:func:`collect_status` scrapes every endpoint of ``ops.endpoints`` (default: the three role ports of the config)
once and combines what the workers export (:mod:`adrec_stream.ops.metrics`) into one JSON-able dict; the dashboard
(:mod:`adrec_stream.ops.dashboard`) shows the same dict, so the page and the command agree by construction. The
size of the dead-letter topic is read from the broker (it survives worker restarts, unlike the counters).

Snapshot fields (all figures as exported by the workers; counters count since each worker started):

- ``taken_at``: Unix seconds; ``workers``: per endpoint ``{endpoint, up, role, pid, ready, not_ready, error}``.
- ``lag``: ``{topic: {partition: records}}`` and ``lag_total``: ``{topic: records}`` (consumer lag of the workers);
  ``lag_clicks`` / ``lag_sequence_updates``: the totals of the configured clicks and sequence-updates topics (None
  when no worker reports them).
- ``throughput_per_s``: per role, records consumed per second over the last minute (``ops.recent_window_s``).
- ``serving_model``: ``{version, age_s, versions}`` of the score workers (``versions``: each worker's, when they
  differ during a switch); ``latency_ms``: click -> recommendation p50/p95/p99 of the last minute (the largest
  over score workers).
- ``clicks_applied``, ``dead_lettered`` (``{total, by_reason}``), ``dead_letter_topic_records`` (broker),
  ``skipped`` (records consumed but not processed, by reason: tombstones, empty keys, bad sequence updates),
  ``recommendations``, ``fallbacks``.
- ``prequential``: HR@10 / NDCG@10 over the last ``ops.prequential_last_n`` judged clicks of each score worker,
  ``judged`` (clicks in those windows; the workers' windows are combined weighted by their sizes) and
  ``judged_total``.
- ``finetune``: rounds published / rejected (by reason), held-out NDCG@10 of the last round (candidate, serving),
  the last published version, the last round's seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from adrec_stream.argtypes import host_port
from adrec_stream.errors import ConfigError
from adrec_stream.stream.config import StreamConfig


def _num(x: float) -> float | None:
    """A JSON-safe number: NaN / inf -> None."""
    return None if x is None or not math.isfinite(x) else float(x)


def scrape(endpoint: str, timeout_s: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of one endpoint's ``/metrics``: sample name -> [(labels, value)].

    Raises:
        OSError: the endpoint is unreachable or answered with an HTTP error (``urllib.error.URLError``).
    """
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def readiness(endpoint: str, timeout_s: float) -> dict[str, Any]:
    """The endpoint's ``/readyz`` JSON (``{"ready", "checks"}``), whether it answered 200 or 503.

    Raises:
        OSError: unreachable, or a body that is not the readiness JSON.
    """
    try:
        with urllib.request.urlopen(f"http://{endpoint}/readyz", timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        if err.code == 503:
            return json.loads(err.read())
        raise


def _value(samples: dict, name: str, **labels: str) -> float | None:
    for lab, v in samples.get(name, ()):
        if all(lab.get(k) == want for k, want in labels.items()):
            return v
    return None


def _sum(samples: dict, name: str) -> float:
    return sum(v for _, v in samples.get(name, ()))


def _by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for lab, v in samples.get(name, ()):
        out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
    return out


def _scrape_one(endpoint: str, timeout_s: float) -> tuple[dict[str, Any], dict | None]:
    entry: dict[str, Any] = {"endpoint": endpoint, "up": False, "role": None, "pid": None, "ready": None,
                             "not_ready": {}, "error": None}
    try:
        samples = scrape(endpoint, timeout_s)
        ready = readiness(endpoint, timeout_s)
    except (OSError, ValueError) as err:
        entry["error"] = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        return entry, None
    info = samples.get("adrec_worker_info", [({}, 0.0)])[0][0]
    entry.update(up=True, role=info.get("role"), pid=int(info["pid"]) if info.get("pid", "").isdigit() else None,
                 ready=bool(ready.get("ready")),
                 not_ready={k: c.get("reason", "") for k, c in ready.get("checks", {}).items() if not c.get("ok")})
    return entry, samples


def dead_letter_topic_records(cfg: StreamConfig, timeout_s: float) -> int | None:
    """Records held by the dead-letter topic (end offsets minus beginning offsets); None when no bootstrap server
    accepts a connection within ``timeout_s`` (checked first, so a stopped broker costs one connect attempt, not the
    Kafka client's bootstrap retries) or the topic cannot be read."""
    import logging  # noqa: PLC0415

    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    from adrec_stream.broker.admin import port_open, true_end_offsets  # noqa: PLC0415
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415
    from adrec_stream.broker.security import kafka_client_kwargs, security_of  # noqa: PLC0415

    bootstrap = effective_bootstrap(cfg)
    hosts = [s.rpartition(":") for s in bootstrap.split(",")]
    if not any(port_open(h.strip(), int(p), timeout=min(timeout_s, 1.0)) for h, _, p in hosts):
        return None
    topic = cfg.topics.dead_letter.name
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # the client logs every failed attempt; the snapshot says "-" instead
    try:
        ends = true_end_offsets(bootstrap, topic, compat=cfg.broker.tansu_compat, timeout_s=timeout_s,
                                security=security_of(cfg))
        consumer = KafkaConsumer(**kafka_client_kwargs(cfg), group_id=None, enable_auto_commit=False,
                                 request_timeout_ms=int(max(timeout_s, 5) * 1000) + 1000)
        try:
            begins = consumer.beginning_offsets([TopicPartition(topic, p) for p in ends])
        finally:
            consumer.close()
    except Exception:  # noqa: BLE001 - best effort: the status still prints without it
        return None
    finally:
        kafka_log.setLevel(level)
    return int(sum(ends.values()) - sum(int(v) for v in begins.values()))


def collect_status(cfg: StreamConfig, endpoints: Iterable[str] | None = None, *, with_broker: bool = True,
                   timeout_s: float | None = None) -> dict[str, Any]:
    """Scrape every worker endpoint once (in parallel) and combine the figures (fields in the module docstring).

    Args:
        cfg: the stream config (``ops`` section; broker for the dead-letter topic size).
        endpoints: ``host:port`` list; default ``cfg.ops.endpoint_list()``.
        with_broker: also read the dead-letter topic's size from the broker (None when unreachable).
        timeout_s: per request; default ``cfg.ops.scrape_timeout_s``.

    Returns:
        The snapshot dict (JSON-able: NaN written as null). Unreachable endpoints are listed with ``up: false``
        and their error; nothing raises for them.
    """
    timeout = timeout_s or cfg.ops.scrape_timeout_s
    eps = list(endpoints) if endpoints is not None else cfg.ops.endpoint_list()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(eps)))) as pool:
        scraped = list(pool.map(lambda e: _scrape_one(e, timeout), eps))
    workers = [w for w, _ in scraped]
    by_role: dict[str, list[dict]] = {}
    for w, s in scraped:
        if s is not None and w["role"]:
            by_role.setdefault(w["role"], []).append(s)

    lag: dict[str, dict[str, int]] = {}
    for ss in by_role.values():
        for s in ss:
            for lab, v in s.get("adrec_consumer_lag_records", ()):
                lag.setdefault(lab.get("topic", ""), {})[lab.get("partition", "")] = int(v)
    lag = {t: dict(sorted(p.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]))
           for t, p in sorted(lag.items())}

    ingest, score, finetune = by_role.get("ingest", []), by_role.get("score", []), by_role.get("finetune", [])
    versions = sorted({int(v) for s in score if (v := _value(s, "adrec_serving_model_version")) is not None
                       and v >= 0})
    ages = [a for s in score if (a := _value(s, "adrec_serving_model_age_seconds")) is not None and math.isfinite(a)]
    latency = {}
    for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        vals = [v for s in score if (v := _value(s, "adrec_click_to_recommendation_last_minute_seconds", quantile=q))
                is not None and math.isfinite(v)]
        latency[key] = round(max(vals) * 1000.0, 3) if vals else None
    n_w = [(s, _value(s, "adrec_prequential_window_judged") or 0.0) for s in score]
    n_total = sum(n for _, n in n_w)

    def weighted(name: str) -> float | None:
        if n_total <= 0:
            return None
        return sum((_value(s, name) or 0.0) * n for s, n in n_w if n > 0) / n_total

    dead = {}
    for s in ingest:
        for reason, v in _by_label(s, "adrec_clicks_dead_lettered_total", "reason").items():
            dead[reason] = dead.get(reason, 0) + int(v)
    skipped: dict[str, int] = {}
    for ss in by_role.values():
        for s in ss:
            for reason, v in _by_label(s, "adrec_records_skipped_total", "reason").items():
                if v:
                    skipped[reason] = skipped.get(reason, 0) + int(v)
    rejected: dict[str, int] = {}
    for s in finetune:
        for reason, v in _by_label(s, "adrec_finetune_rejected_total", "reason").items():
            rejected[reason] = rejected.get(reason, 0) + int(v)
    ft_published = [int(v) for s in finetune if (v := _value(s, "adrec_finetune_published_version")) is not None
                    and v >= 0]
    heldout = {m: _num(v) for s in finetune for m, v in _by_label(s, "adrec_finetune_heldout_ndcg_at_10", "model").items()}
    round_s = [v for s in finetune if (v := _value(s, "adrec_finetune_round_seconds")) is not None]
    return {
        "taken_at": round(time.time(), 3),
        "workers": workers,
        "lag": lag,
        "lag_total": {t: sum(p.values()) for t, p in lag.items()},
        "lag_clicks": sum(lag[cfg.topics.clicks.name].values()) if cfg.topics.clicks.name in lag else None,
        "lag_sequence_updates": (sum(lag[cfg.topics.sequence_updates.name].values())
                                 if cfg.topics.sequence_updates.name in lag else None),
        "throughput_per_s": {role: round(sum(_value(s, "adrec_events_last_minute_per_second") or 0.0 for s in ss), 3)
                             for role, ss in sorted(by_role.items())},
        "serving_model": {"version": versions[-1] if versions else None,
                          "age_s": round(min(ages), 1) if ages else None, "versions": versions},
        "latency_ms": latency,
        "clicks_applied": int(sum(_sum(s, "adrec_clicks_applied_total") for s in ingest)),
        "dead_lettered": {"total": sum(dead.values()), "by_reason": dict(sorted(dead.items()))},
        "dead_letter_topic_records": dead_letter_topic_records(cfg, timeout) if with_broker else None,
        "skipped": dict(sorted(skipped.items())),
        "recommendations": int(sum(_sum(s, "adrec_recommendations_total") for s in score)),
        "fallbacks": int(sum(_sum(s, "adrec_recommendation_fallbacks_total") for s in score)),
        "prequential": {"HR@10": _num(weighted("adrec_prequential_hr_at_10")),
                        "NDCG@10": _num(weighted("adrec_prequential_ndcg_at_10")),
                        "judged": int(n_total), "last_n": cfg.ops.prequential_last_n,
                        "judged_total": int(sum(_sum(s, "adrec_prequential_judged_total") for s in score))},
        "finetune": {"rounds_published": int(sum(_value(s, "adrec_finetune_rounds_total", outcome="published") or 0
                                                 for s in finetune)),
                     "rounds_rejected": int(sum(rejected.values())), "rejected_by_reason": dict(sorted(rejected.items())),
                     "heldout_ndcg_at_10": heldout, "published_version": max(ft_published) if ft_published else None,
                     "last_round_s": _num(max(round_s)) if round_s else None},
    }


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render_text(st: dict[str, Any]) -> str:
    """The snapshot as the human-readable block ``adrec-stream status`` prints."""
    lines = [f"adrec-stream status at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st['taken_at']))}"]
    lines.append("workers:")
    if st["workers"] and not any(w["up"] for w in st["workers"]):
        lines.append("  (no endpoint answers: start the workers - adrec-stream worker ingest|score|finetune - or name "
                     "theirs with --endpoint HOST:PORT / ops.endpoints)")
    for w in st["workers"]:
        if not w["up"]:
            lines.append(f"  {w['endpoint']:<22} DOWN  {w['error']}")
            continue
        state = "ready" if w["ready"] else "NOT READY: " + "; ".join(f"{k}: {v}" for k, v in w["not_ready"].items())
        lines.append(f"  {w['endpoint']:<22} {w['role']:<9} pid {w['pid']}  {state}")
    for topic, parts in st["lag"].items():
        lines.append(f"lag {topic}: total {st['lag_total'][topic]:,}  "
                     + "  ".join(f"p{p}={v:,}" for p, v in parts.items()))
    tp = st["throughput_per_s"]
    lines.append("throughput (last minute, records/s): " + ("  ".join(f"{r} {v:,.1f}" for r, v in tp.items()) or "-"))
    sm = st["serving_model"]
    age = f"{sm['age_s']:,.0f} s" if sm["age_s"] is not None else "-"
    lines.append(f"serving model: version {_fmt(sm['version'])}  age {age}"
                 + (f"  (workers differ: {sm['versions']})" if len(sm["versions"]) > 1 else ""))
    lat = st["latency_ms"]
    lines.append(f"click -> recommendation (last minute): p50 {_fmt(lat['p50'], 1)} ms  p95 {_fmt(lat['p95'], 1)} ms"
                 f"  p99 {_fmt(lat['p99'], 1)} ms")
    lines.append(f"clicks applied {st['clicks_applied']:,}  recommendations {st['recommendations']:,}"
                 f"  fallbacks {st['fallbacks']:,}")
    dl = st["dead_lettered"]
    reasons = f" ({', '.join(f'{k} {v:,}' for k, v in dl['by_reason'].items())})" if dl["by_reason"] else ""
    lines.append(f"dead-lettered: {dl['total']:,} since the workers started{reasons}; dead-letter topic holds "
                 f"{_fmt(st['dead_letter_topic_records'])}"
                 + (f"; skipped {', '.join(f'{k} {v:,}' for k, v in st['skipped'].items())}" if st["skipped"] else ""))
    pq = st["prequential"]
    lines.append(f"prequential (last {pq['judged']:,} of up to {pq['last_n']:,} judged clicks per score worker): "
                 f"HR@10 {_fmt(pq['HR@10'])}  NDCG@10 {_fmt(pq['NDCG@10'])}  ({pq['judged_total']:,} judged in all)")
    ft = st["finetune"]
    lines.append(f"fine-tune: {ft['rounds_published']} published, {ft['rounds_rejected']} rejected"
                 + (f" {ft['rejected_by_reason']}" if ft["rejected_by_reason"] else "")
                 + f"; last held-out NDCG@10 candidate {_fmt(ft['heldout_ndcg_at_10'].get('candidate'))}"
                 f" vs serving {_fmt(ft['heldout_ndcg_at_10'].get('serving'))}; last published version "
                 f"{_fmt(ft['published_version'])}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set``, ``--endpoint`` (repeatable), ``--json``, ``--no-broker``."""
    from adrec_stream.stream.worker_cli import add_common_config_arguments  # noqa: PLC0415

    add_common_config_arguments(parser)
    parser.add_argument("--endpoint", action="append", default=None, metavar="HOST:PORT", type=host_port,
                        help="a worker's metrics endpoint (repeatable; default: ops.endpoints, or the three role "
                             "ports of the config)")
    parser.add_argument("--json", action="store_true", help="print the snapshot as one JSON object")
    parser.add_argument("--no-broker", action="store_true",
                        help="do not ask the broker for the dead-letter topic's size (only the workers' endpoints)")
    parser.epilog = ("Reads each worker's /metrics and /readyz (configs/stream.yaml ops:). Exit status (for scripts and "
                     "probes): 1 when an endpoint that answers is not ready, when an endpoint named with --endpoint or "
                     "ops.endpoints does not answer, or when none answers; else 0. With the default endpoints (the "
                     "three role ports) a role that is not running, e.g. no fine-tune worker, is listed as not "
                     "running and does not count.")


def run(args: argparse.Namespace) -> int:
    """Print one snapshot; exit 1 when an endpoint is down or not ready."""
    from adrec_stream.stream.worker_cli import load_from_args  # noqa: PLC0415

    cfg = load_from_args(args)
    if not args.no_broker:
        check_broker_security(cfg)
    st = collect_status(cfg, args.endpoint, with_broker=not args.no_broker)
    print(json.dumps(st) if args.json else render_text(st), flush=True)
    return probe_exit_code(st["workers"], explicit=bool(args.endpoint or cfg.ops.endpoints))


def check_broker_security(cfg: StreamConfig) -> None:
    """Resolve the config's TLS / SASL settings as every client does (credentials from the environment), so that a
    missing credential is the one-line refusal of every other command, not a silent ``-`` for the dead-letter topic.

    Raises:
        ConfigError: the settings or credentials are refused; the message adds ``--no-broker``.
    """
    from adrec_stream.broker.security import security_of  # noqa: PLC0415

    try:
        security_of(cfg)
    except ConfigError as err:
        raise ConfigError(f"{err} (or pass --no-broker to read only the workers' endpoints)") from None


def probe_exit_code(workers: list[dict[str, Any]], *, explicit: bool) -> int:
    """0 when the deployment looks healthy, else 1 (rules in ``status --help``): every answering endpoint ready, and
    every endpoint answering when they were named explicitly (else at least one)."""
    up = [w for w in workers if w["up"]]
    if not up or not all(w["ready"] for w in up):
        return 1
    return 1 if explicit and len(up) < len(workers) else 0
