"""``adrec-stream replay``: produce a logged interaction file into the clicks topic as click events.

The file (MovieLens ``u.data``, ``ratings.csv``, ML-1M ``.dat`` or generic ``user,item,ts`` CSV) is read with
:func:`adrec_stream.data.events.read_interactions` with the stream config's ``item_id_type``, which orders it by
time (ties keep file order) and applies the shared id and timestamp rules of :mod:`adrec_stream.data.events`,
the ones the click decoder applies: a row the ingest worker would refuse (e.g. a millisecond timestamp, or
``"12a"`` with ``item_id_type: int``) stops the replay before anything is sent, with the same reason code,
instead of being dead-lettered click by click. The first
``skip_fraction`` of that order is skipped (e.g. 0.8 = the part a model was trained on) and at most ``limit``
events follow. Each click has key = user id (so one user's clicks share a partition and keep their order),
value = :func:`~adrec_stream.stream.events.encode_click`, and a deterministic ``event_id``
``"<file name>:<index>"`` where index is the event's 0-based position in the time order of the whole file;
replaying the same file twice gives the same ids. The Kafka record timestamp is the produce time, which the
pipeline carries through as ``produced_ts`` for latency measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adrec_stream.data.events import FieldError, Interaction, canonical_interaction
from adrec_stream.errors import ConfigError, DataFileError
from adrec_stream.stream.events import encode_click


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of one replay: events sent, wall time (s), achieved rate (events/s), first/last event ids."""

    sent: int
    wall_s: float
    rate_per_s: float
    first_event_id: str | None
    last_event_id: str | None


def select_clicks(interactions: Sequence, source_name: str, *, skip_fraction: float = 0.0,
                  limit: int | None = None, item_id_type: str = "str") -> list[Interaction]:
    """Turn time-ordered interactions into click events with deterministic ids.

    Args:
        interactions: :class:`~adrec_stream.data.events.Interaction` records sorted by (ts, file order).
        source_name: prefix of the event ids (the file name).
        skip_fraction: fraction in [0, 1) of the time order to skip; the split point is
            ``floor(skip_fraction * n)``, the same as ``chronological_split``'s train part when equal.
        limit: at most this many events (None = all remaining).
        item_id_type: the item-id rule of the stream the clicks go to (ids and ts pass the shared rules of
            :mod:`adrec_stream.data.events`, exactly as the click decoder will apply them).

    Raises:
        ConfigError: ``skip_fraction`` outside [0, 1) or negative ``limit``.
        DataFileError: an interaction the click decoder would refuse (naming its position and the reason code).
    """
    if not 0.0 <= skip_fraction < 1.0:
        raise ConfigError(f"--skip-fraction must be in [0, 1), got {skip_fraction}")
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    start = int(math.floor(skip_fraction * len(interactions)))
    stop = len(interactions) if limit is None else min(len(interactions), start + limit)
    out = []
    for i, x in zip(range(start, stop), interactions[start:stop]):
        try:
            c = canonical_interaction(Interaction(x.user_id, x.item_id, x.ts), item_id_type)
        except FieldError as err:
            raise DataFileError(f"{source_name}: event {i} (in time order) would be refused by the ingest worker: "
                                f"{err}") from None
        out.append(c._replace(event_id=f"{source_name}:{i}"))
    return out


async def produce_clicks(bootstrap: str, topic: str, clicks: Sequence[Interaction], *,
                         rate_per_s: float | None = None, linger_s: float = 0.005,
                         progress: bool = True, security: Any = None) -> ReplayResult:
    """Produce ``clicks`` in order (key = user id), paced at ``rate_per_s`` (None/0 = as fast as possible).

    ``security``: a :class:`~adrec_stream.broker.security.KafkaSecurity` for TLS / SASL (None: PLAINTEXT).

    Waits for every delivery (acks=all) before returning. Pacing is absolute (event i is due at
    start + i/rate), so short stalls are caught up.

    Raises:
        BrokerError: the producer could not connect or a delivery failed.
    """
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from adrec_stream.errors import BrokerError  # noqa: PLC0415

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap.split(","), linger_ms=int(linger_s * 1000), acks="all",
                                max_batch_size=256 * 1024, client_id="adrec-replay",
                                **(security.aiokafka() if security is not None else {}))
    try:
        await producer.start()
    except Exception as err:  # noqa: BLE001
        await producer.stop()
        raise BrokerError(f"replay: cannot connect to {bootstrap}: {err}; is the broker running?") from None
    bar = tqdm(total=len(clicks), unit="ev", desc="replay", disable=not progress, file=sys.stderr,
               mininterval=0.5)
    t0 = time.perf_counter()
    pending: list[asyncio.Future] = []
    try:
        for i, ev in enumerate(clicks):
            if rate_per_s:
                due = t0 + i / rate_per_s
                delay = due - time.perf_counter()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic, value=encode_click(ev), key=ev.user_id.encode()))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
            bar.update(len(pending))
    except BrokerError:
        raise
    except Exception as err:  # noqa: BLE001
        raise BrokerError(f"replay: delivery to {topic} on {bootstrap} failed: {err}") from None
    finally:
        bar.close()
        await producer.stop()
    wall = time.perf_counter() - t0
    return ReplayResult(len(clicks), wall, len(clicks) / wall if wall > 0 else 0.0,
                        clicks[0].event_id if clicks else None, clicks[-1].event_id if clicks else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the replay options."""
    from adrec_stream.stream.worker_cli import add_common_config_arguments  # noqa: PLC0415

    parser.add_argument("--dataset", default=None, help="interaction file (default replay.path from the config)")
    parser.add_argument("--format", default=None, choices=["auto", "ml100k", "mlcsv", "ml1m", "csv"],
                        help="file format (default replay.format)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, metavar="EVENTS_PER_S", help="pace the replay")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (default when rate is 0)")
    parser.add_argument("--limit", type=int, default=None, help="at most N events")
    parser.add_argument("--skip-fraction", type=float, default=0.0,
                        help="skip this leading fraction of the time order (0.8 = replay the last 20%%)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """CLI entry: read, select and produce; prints a one-line JSON summary."""
    import json  # noqa: PLC0415

    from adrec_stream.broker.admin import ensure_topics  # noqa: PLC0415
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415
    from adrec_stream.data.events import read_interactions  # noqa: PLC0415
    from adrec_stream.stream.worker_cli import load_from_args  # noqa: PLC0415

    cfg = load_from_args(args)
    path = Path(args.dataset or cfg.replay.path)
    interactions = read_interactions(path, fmt=args.format or cfg.replay.format, item_id_type=cfg.item_id_type)
    clicks = select_clicks(interactions, path.name, skip_fraction=args.skip_fraction, limit=args.limit,
                           item_id_type=cfg.item_id_type)
    rate = None if args.as_fast_as_possible else (args.rate if args.rate is not None else cfg.replay.rate_per_s)
    if rate is not None and rate < 0:
        raise ConfigError(f"--rate must be > 0, got {rate}")
    from adrec_stream.broker.security import security_of  # noqa: PLC0415

    bootstrap = effective_bootstrap(cfg)
    security = security_of(cfg)
    # Create the clicks topic with its configured partition count before producing: a producer sending to a
    # missing topic makes many brokers (Tansu always, Kafka with auto.create.topics.enable) create it with
    # THEIR default partition count, which then disagrees with the keyed state of the ingest workers.
    ensure_topics(bootstrap, [cfg.topics.clicks], security=security)
    res = asyncio.run(produce_clicks(bootstrap, cfg.topics.clicks.name, clicks,
                                     rate_per_s=rate or None, progress=not args.no_progress, security=security))
    print(json.dumps({"sent": res.sent, "wall_s": round(res.wall_s, 3), "rate_per_s": round(res.rate_per_s, 1),
                      "first_event_id": res.first_event_id, "last_event_id": res.last_event_id,
                      "topic": cfg.topics.clicks.name}))
    return 0
