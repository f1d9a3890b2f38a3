"""Model-version announcements on ``topics.model_versions``: publishers say "version N is in the registry", every
score worker hears it and switches at once, on every host, without polling a folder.

Record: key = the registry URL (UTF-8; the topic is compacted, so the newest announcement per registry is kept),
value = JSON ``{"version", "registry", "sha256", "published_ts", "source", "rollback", "announced_ts"}``
(:func:`announcement`). Producers: the fine-tune worker after each publish, ``adrec-stream model publish`` and
``model rollback`` (:class:`Announcer`). Consumer: :class:`VersionFollower`, a thread in each score worker that
assigns itself every partition of the topic WITHOUT a consumer group (so every worker sees every announcement,
not one worker per group), reads from the beginning and hands each announcement to
:meth:`~adrec_stream.serving.recommender.ReloadingRecommender.announce`. The worker loads an announced version
from its OWN configured registry and only when the registry's manifest has the announced checksum; a record
cannot make it download from elsewhere. A missed announcement is caught by the registry poll
(``model_versions.registry_poll``), and nothing ever moves a worker to an older version unless it is a rollback.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from adrec_stream.logging import get_logger

log = get_logger("adrec_stream.announce")


def announcement(registry: Any, version: int, *, source: str, rollback: bool = False) -> tuple[bytes, bytes]:
    """``(key, value)`` of the announcement of ``version`` of ``registry`` (any registry class).

    Raises:
        ValueError: the version is not a complete version of the registry.
    """
    info = registry.info(version)
    if info is None:
        raise ValueError(f"version {version} is not a complete version of registry {registry.url}")
    value = {"version": version, "registry": registry.url, "sha256": info.get("sha256"),
             "published_ts": registry.published_ts(version), "source": source, "rollback": rollback,
             "announced_ts": time.time()}
    return registry.url.encode(), orjson.dumps(value)


def parse_announcement(value: bytes | None) -> dict[str, Any]:
    """Decode an announcement value.

    Raises:
        ValueError: not a JSON object with an integer ``version`` >= 1.
    """
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("version"), int) or isinstance(obj.get("version"), bool) \
            or obj["version"] < 1:
        raise ValueError("not a model-version announcement (needs an integer version >= 1)")
    return obj


class Announcer:
    """Produces announcements of one stream config's registry (kafka-python producer, acks=all).

    The producer is not idempotent (an announcement is keyed by registry and carries its version, so a duplicate
    is harmless) and is dropped after a failed delivery: a broker restarted empty has forgotten every producer id,
    and a kafka-python producer that keeps one fails all later sends (Tansu answers error -1). The next
    :meth:`announce` connects afresh.

    Args:
        cfg: the stream config (topic, cluster, security).
        timeout_s: delivery timeout of an announcement, seconds (:meth:`announce` waits up to 2 s longer).
    """

    def __init__(self, cfg: Any, *, timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.topic = cfg.topics.model_versions.name
        self.timeout_s = timeout_s
        self._producer: Any = None

    def announce(self, registry: Any, version: int, *, source: str, rollback: bool = False) -> dict[str, Any]:
        """Send the announcement of ``version`` and wait for its delivery; returns the announced value.

        Raises:
            BrokerError: the cluster is unreachable or the delivery failed within ``timeout_s``.
            ConfigError: the security settings cannot be resolved (credentials missing).
        """
        from adrec_stream.errors import BrokerError  # noqa: PLC0415

        key, value = announcement(registry, version, source=source, rollback=rollback)
        try:
            if self._producer is None:
                from kafka import KafkaProducer  # noqa: PLC0415

                from adrec_stream.broker.security import kafka_client_kwargs  # noqa: PLC0415

                ms = int(self.timeout_s * 1000)  # an undelivered record expires within timeout_s (then close() works)
                self._producer = KafkaProducer(**kafka_client_kwargs(self.cfg), acks="all", enable_idempotence=False,
                                               client_id=f"{self.cfg.client_id}-announce", max_block_ms=ms,
                                               request_timeout_ms=ms // 2, delivery_timeout_ms=ms)
            self._producer.send(self.topic, key=key, value=value).get(timeout=self.timeout_s + 2.0)
        except BrokerError:
            raise
        except Exception as err:  # noqa: BLE001 - kafka-python raises several unrelated types
            self._drop_producer()
            raise BrokerError(f"could not announce model version {version} on topic {self.topic}: {err}; score workers "
                              "still pick it up at their next registry poll") from None
        return orjson.loads(value)

    def close(self) -> None:
        """Close the producer (if one was created)."""
        self._drop_producer()

    def _drop_producer(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:  # flushes first: waits for an undelivered record to expire (<= timeout_s)
                producer.close(self.timeout_s + 2.0)
            except Exception:  # noqa: BLE001 - closing a failed producer must not hide the first error
                log.warning("announce_producer_close_failed", exc_info=True)


class VersionFollower:
    """A daemon thread that feeds every announcement of ``topics.model_versions`` to ``recommender.announce``.

    Args:
        cfg: the stream config (topic and its partition count, cluster, security, consumer timing).
        recommender: a :class:`~adrec_stream.serving.recommender.ReloadingRecommender`.
        poll_timeout_s: longest wait of one poll (also the stop latency), seconds.
    """

    def __init__(self, cfg: Any, recommender: Any, *, poll_timeout_s: float = 0.5) -> None:
        self.cfg, self.recommender = cfg, recommender
        self.topic = cfg.topics.model_versions.name
        self.poll_timeout_s = poll_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-version-follower", daemon=True)
        self.seen = 0
        self.error: BaseException | None = None

    def start(self) -> VersionFollower:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout_s`` seconds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

        from adrec_stream.broker.security import kafka_client_kwargs  # noqa: PLC0415

        consumer = KafkaConsumer(**kafka_client_kwargs(self.cfg), group_id=None, enable_auto_commit=False,
                                 client_id=f"{self.cfg.client_id}-versions", auto_offset_reset="earliest",
                                 fetch_max_wait_ms=max(10, int(self.cfg.consumer.fetch_max_wait_s * 1000)),
                                 request_timeout_ms=int(self.cfg.consumer.request_timeout_s * 1000))
        tps = [TopicPartition(self.topic, p) for p in range(self.cfg.topics.model_versions.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return consumer

    def _run(self) -> None:
        consumer = None
        try:
            while not self._stop.is_set() and consumer is None:
                try:
                    consumer = self._consumer()
                except Exception as err:  # noqa: BLE001 - retried: the registry poll covers the gap
                    log.warning("version_follower_connect_failed", topic=self.topic, error=str(err)[:200])
                    self._stop.wait(2.0)
            log.info("version_follower_started", topic=self.topic)
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=int(self.poll_timeout_s * 1000))
                for msgs in polled.values():
                    for m in msgs:
                        self._handle(m)
        except Exception as err:  # noqa: BLE001 - never kill the worker: polling still converges
            self.error = err
            log.error("version_follower_failed", topic=self.topic, error=repr(err)[:300],
                      action="score worker keeps serving; new versions arrive through registry polling only")
        finally:
            if consumer is not None:
                consumer.close()

    def _handle(self, m: Any) -> None:
        self.seen += 1
        try:
            ann = parse_announcement(m.value)
        except ValueError as err:
            log.warning("bad_model_version_announcement", partition=m.partition, offset=m.offset, error=str(err))
            return
        self.recommender.announce(ann["version"], sha256=ann.get("sha256"), registry_url=ann.get("registry"),
                                  rollback=bool(ann.get("rollback")))
