"""Topic administration and end-offset queries against the broker (embedded Tansu or a Kafka cluster).

:func:`true_end_offsets` works around Tansu 0.6.0's ``ListOffsets(latest)`` bug when ``broker.tansu_compat`` is on
(see :mod:`adrec_stream.stream.compat`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from adrec_stream.broker.config import TopicConfig
from adrec_stream.errors import BrokerError
from adrec_stream.logging import get_logger

if TYPE_CHECKING:
    from adrec_stream.broker.security import KafkaSecurity

log = get_logger("adrec_stream.broker")


def _security_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    """kafka-python keyword arguments of ``security`` (none: PLAINTEXT)."""
    return security.kafka_python() if security is not None else {}


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def list_topics(bootstrap: str, timeout_s: float = 10.0, *, security: KafkaSecurity | None = None) -> dict[str, int]:
    """Topic name -> partition count, as reported by the cluster metadata (internal ``__`` topics left out).

    ``security``: TLS / SASL of the connection (:func:`~adrec_stream.broker.security.resolve_security`; None:
    PLAINTEXT).

    Raises:
        BrokerError: the broker could not be reached within ``timeout_s``.
    """
    from kafka import KafkaAdminClient  # noqa: PLC0415 - keep CLI start fast

    if not any(port_open(h, int(p), timeout=min(2.0, timeout_s))
               for h, _, p in (s.strip().rpartition(":") for s in bootstrap.split(","))):
        raise BrokerError(f"cannot reach a Kafka broker at {bootstrap}: no server accepts connections; is it "
                          "running (`adrec-stream broker status`)?")
    try:
        extra = ({"bootstrap_timeout_ms": int(timeout_s * 1000)}
                 if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG else {})  # kafka-python >= 3
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="adrec-stream-admin",
                                 request_timeout_ms=int(timeout_s * 1000), **extra, **_security_kwargs(security))
    except Exception as err:  # noqa: BLE001 - kafka-python raises several unrelated types here
        if security is not None and security.protocol != "PLAINTEXT":
            raise BrokerError(f"cannot connect to the Kafka cluster at {bootstrap} with security_protocol "
                              f"{security.protocol}: {err}; a server accepts connections, so check the TLS files, "
                              "the SASL mechanism and the credentials (the kafka.* log lines above name the "
                              "handshake's error)") from None
        raise BrokerError(f"cannot reach a Kafka broker at {bootstrap}: {err}; is it running "
                          "(`adrec-stream broker status`)?") from None
    try:
        meta = admin.describe_topics()
        names = ((t.get("name") or t.get("topic"), t) for t in meta)
        return {n: len(t["partitions"]) for n, t in names if n and not n.startswith("__")}
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: Iterable[TopicConfig], timeout_s: float = 10.0, *,
                  security: KafkaSecurity | None = None) -> list[str]:
    """Create the topics that do not exist yet (with their partitions, replication factor and topic ``configs``)
    and wait until the metadata lists them all.

    Existing topics are left as they are (a partition-count mismatch is logged, not changed). ``security``: see
    :func:`list_topics`.

    Returns:
        Names of the topics this call created.

    Raises:
        BrokerError: unreachable broker, creation refused, or topics not visible within ``timeout_s``.
    """
    from kafka import KafkaAdminClient  # noqa: PLC0415
    from kafka.admin import NewTopic  # noqa: PLC0415
    from kafka.errors import TopicAlreadyExistsError  # noqa: PLC0415

    topics = list(topics)
    deadline = time.time() + timeout_s
    existing = list_topics(bootstrap, timeout_s, security=security)
    missing = [t for t in topics if t.name not in existing]
    for t in topics:
        if t.name in existing and existing[t.name] != t.partitions:
            log.warning("topic_partitions_differ", topic=t.name, existing=existing[t.name], configured=t.partitions)
    if missing:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="adrec-stream-admin",
                                 request_timeout_ms=int(timeout_s * 1000), **_security_kwargs(security))
        try:
            for t in missing:
                try:
                    admin.create_topics([NewTopic(t.name, t.partitions, t.replication_factor,
                                                  topic_configs=dict(t.configs))])
                except TopicAlreadyExistsError:
                    pass
                except Exception as err:  # noqa: BLE001
                    raise BrokerError(f"could not create topic {t.name!r} ({t.partitions} partitions) on "
                                      f"{bootstrap}: {err}") from None
        finally:
            admin.close()
    while True:
        now = list_topics(bootstrap, timeout_s, security=security)
        absent = [t.name for t in topics if now.get(t.name, 0) < 1]
        if not absent:
            break
        if time.time() > deadline:
            raise BrokerError(f"topics {absent} not visible on {bootstrap} after {timeout_s} s")
        time.sleep(0.1)
    if missing:
        log.info("topics_created", topics={t.name: t.partitions for t in missing}, bootstrap=bootstrap)
    return [t.name for t in missing]


def merge_end_offsets(listed: Mapping[Any, int], highwaters: Mapping[Any, int | None]) -> dict[Any, int]:
    """Per partition ``max(listed end offset, fetch high watermark)``; a missing watermark keeps the listed one."""
    out = {}
    for tp, end in listed.items():
        hw = highwaters.get(tp)
        out[tp] = max(int(end), int(hw)) if hw is not None else int(end)
    return out


def true_end_offsets(bootstrap: str, topic: str, *, compat: bool, timeout_s: float = 10.0,
                     security: KafkaSecurity | None = None) -> dict[int, int]:
    """End offset (offset of the next record to be written) of every partition of ``topic``.

    Without compat this is plain ``ListOffsets(latest)``. With compat, the consumer also fetches from each
    partition (starting one before the listed end, where the true end is at or after) and takes the larger of
    the listed end and the fetch high watermark.

    ``security``: see :func:`list_topics`.

    Returns:
        partition -> end offset.

    Raises:
        BrokerError: unknown topic or broker unreachable.
    """
    import time  # noqa: PLC0415

    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    from adrec_stream.errors import BrokerError  # noqa: PLC0415

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, group_id=None,
                                 fetch_max_wait_ms=100, request_timeout_ms=int(max(timeout_s, 5) * 1000) + 1000,
                                 consumer_timeout_ms=int(timeout_s * 1000), **_security_kwargs(security))
    except Exception as err:  # noqa: BLE001
        raise BrokerError(f"cannot reach {bootstrap}: {err}") from None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise BrokerError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        listed = {tp: int(v) for tp, v in consumer.end_offsets(tps).items()}
        if not compat:
            return {tp.partition: v for tp, v in listed.items()}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(0, listed[tp] - 1))
        deadline = time.time() + timeout_s
        pending = set(tps)
        while pending and time.time() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
            pending = {tp for tp in pending if consumer.highwater(tp) is None}
        merged = merge_end_offsets(listed, {tp: consumer.highwater(tp) for tp in tps})
        return {tp.partition: v for tp, v in merged.items()}
    finally:
        consumer.close()
