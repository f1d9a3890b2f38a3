"""Configuration of the streaming side: broker, topics, consumer groups, state, serving.

Loaded from ``configs/stream.yaml`` with :func:`load_stream_config` (dotted overrides allowed, e.g.
``{"broker.port": 19092, "window": 50}``). Every section is a :class:`~adrec_stream.config.StrictModel`:
unknown keys and ill-typed values raise :class:`~adrec_stream.errors.ConfigError`.

Timeout defaults were measured on the embedded Tansu 0.6.0 broker: a 6 s session timeout, 1.5 s heartbeat and 6 s
rebalance timeout make a new consumer-group member receive partitions in ~3-7 s on the embedded Tansu
broker (instead of ~half of a 45-60 s session timeout). Tansu holds every fetch for the full max-wait even when
data arrives, so each consumer hop adds up to ``consumer.fetch_max_wait_s`` of latency. The default 20 ms keeps
click -> recommendation latency low at a cost while idle: an idle ingest worker used 13 % of a core and the broker
6 % (100 ms: 9 % and 2 %) with faust's 5 ms take wait (``batch.ingest_within_s: 0.005``); with natural batching,
the default, 7 % and 7 % (100 ms: 2 % and 2 %; docs/benchmarks.md). Against Apache Kafka a fetch returns as soon
as data arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from adrec_stream.broker.config import BrokerConfig, PosFloat, PosInt, TopicConfig
from adrec_stream.broker.security import SecurityConfig, check_listeners, find_credential_keys, split_listener
from adrec_stream.config import CONFIG_DIR, StrictModel, load_config
from adrec_stream.errors import ConfigError
from adrec_stream.incremental.config import FinetuneConfig
from adrec_stream.ops.config import OpsConfig

#: A float field that also accepts YAML integers (``6`` as well as ``6.0``).
NonNegFloat = Annotated[float, Field(strict=False, ge=0)]
#: A batch wait (seconds): finite, at most one second.
BatchWait = Annotated[float, Field(strict=False, ge=0, le=1.0)]

#: Default path of the stream config shipped with the project.
DEFAULT_STREAM_CONFIG = CONFIG_DIR / "stream.yaml"


#: Topic-level configs of the changelog topic: compacted, so it keeps the latest window of every user (Tansu
#: 0.6.0 accepts and ignores them; a restore reads to the end either way).
CHANGELOG_TOPIC_CONFIG = {"cleanup.policy": "compact"}


class TopicsConfig(StrictModel):
    """The topics of the pipeline.

    - ``clicks``: input, key = user id (UTF-8), value = JSON click (see :mod:`adrec_stream.stream.events`).
    - ``recommendations``: output, key = user id, value = JSON top-k list.
    - ``dead_letter``: undecodable / invalid clicks with a machine-readable reason (dead-letter topic).
    - ``sequence_updates``: per-user window after each applied click (feeds scoring / fine-tuning).
    - ``model_versions``: one announcement per published model version (key = registry URL, compacted; read by
      every score worker without a consumer group, :mod:`adrec_stream.serving.announce`).
    - ``changelog``: compacted changelog of the ingest workers' state, key = user id, value = the user's window
      after a batch and the source offset (:mod:`adrec_stream.state.changelog`); co-partitioned with ``clicks``
      (changelog partition p holds the state of clicks partition p). Left out (null), it is
      ``<clicks name>-changelog`` with the clicks topic's partition count and ``cleanup.policy=compact``; read it
      as :attr:`changelog_topic`.

    Raises (as ConfigError when loaded): names not distinct, or a changelog whose partition count differs from
    the clicks topic's.
    """

    clicks: TopicConfig = TopicConfig(name="clicks", partitions=4)
    recommendations: TopicConfig = TopicConfig(name="recommendations", partitions=4)
    dead_letter: TopicConfig = TopicConfig(name="clicks-dead-letter", partitions=1)
    sequence_updates: TopicConfig = TopicConfig(name="sequence-updates", partitions=4)
    model_versions: TopicConfig = TopicConfig(name="model-versions", partitions=1, configs={"cleanup.policy": "compact"})
    changelog: TopicConfig | None = None

    @model_validator(mode="after")
    def _distinct(self) -> TopicsConfig:
        names = [self.clicks.name, self.recommendations.name, self.dead_letter.name, self.sequence_updates.name,
                 self.model_versions.name, self.changelog_topic.name]
        if len(set(names)) != len(names):
            raise ValueError(f"topic names must be distinct, got {names}")
        if self.changelog_topic.partitions != self.clicks.partitions:
            raise ValueError(f"topics.changelog must have the clicks topic's partition count ({self.clicks.partitions}, "
                             f"got {self.changelog_topic.partitions}): changelog partition p holds the state of clicks "
                             "partition p")
        return self

    @property
    def changelog_topic(self) -> TopicConfig:
        """``changelog`` if set, else derived from the clicks topic (``<clicks name>-changelog``, its partition count,
        ``cleanup.policy=compact``), so that it stays co-partitioned when only the clicks topic is changed."""
        if self.changelog is not None:
            return self.changelog
        return TopicConfig(name=f"{self.clicks.name}-changelog", partitions=self.clicks.partitions,
                           configs=dict(CHANGELOG_TOPIC_CONFIG))

    def all(self) -> list[TopicConfig]:
        """All topics (for creating them on the broker)."""
        return [self.clicks, self.recommendations, self.dead_letter, self.sequence_updates, self.model_versions,
                self.changelog_topic]


class StateConfig(StrictModel):
    """The ingest workers' state beyond the local stores: changelog, restore, standby replicas, partition-count guard.

    - ``changelog``: write every change of a stored window to ``topics.changelog`` before the store write (off:
      state lives on local disk only; a partition that moves to another host starts empty).
    - ``restore_timeout_s``: a newly assigned partition's store must be restored from the changelog within this
      many seconds, else the worker stops with :class:`~adrec_stream.errors.RestoreTimeoutError` (exit 2).
    - ``restore_chunk_records``: changelog records per RocksDB WriteBatch during a restore (bounds memory).
    - ``standby_replicas``: keep warm copies of the partitions this worker does not own by tailing their changelog
      partitions, so a failover restores only the tail. Needs one ingest worker per ``state_dir`` (per host).
    - ``partition_check_interval_s``: seconds between two checks of the clicks topic's partition count (a change
      stops the worker: users would move to other partitions).
    """

    changelog: bool = True
    restore_timeout_s: PosFloat = 300.0
    restore_chunk_records: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    standby_replicas: bool = False
    partition_check_interval_s: PosFloat = 10.0

    @model_validator(mode="after")
    def _check(self) -> StateConfig:
        if self.standby_replicas and not self.changelog:
            raise ValueError("standby_replicas: true tails the changelog topic, which changelog: false turns off; "
                             "set changelog: true, or standby_replicas: false")
        return self


class GroupsConfig(StrictModel):
    """Consumer group ids (the Faust app id is the group of its agents)."""

    app: str = "adrec-stream"
    ingest: str = "adrec-ingest"
    scoring: str = "adrec-scoring"
    finetune: str = "adrec-finetune"


class ConsumerConfig(StrictModel):
    """Consumer-group timing, in seconds (defaults tuned for fast joins on Tansu), and how fetched records reach
    the agents: ``direct_delivery`` (default true) lets faust's drain loop await each record's delivery instead of
    wrapping it in asyncio tasks while no rebalance is under way (:mod:`adrec_stream.stream.delivery`)."""

    session_timeout_s: PosFloat = 6.0
    heartbeat_interval_s: PosFloat = 1.5
    rebalance_timeout_s: PosFloat = 6.0
    fetch_max_wait_s: PosFloat = 0.02
    request_timeout_s: PosFloat = 30.0
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    direct_delivery: bool = True

    @model_validator(mode="after")
    def _check(self) -> ConsumerConfig:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be below session_timeout_s "
                f"({self.session_timeout_s}); Kafka recommends at most a third of it"
            )
        if self.request_timeout_s <= self.fetch_max_wait_s:
            raise ValueError("request_timeout_s must exceed fetch_max_wait_s")
        return self


class BatchConfig(StrictModel):
    """Batch sizes: records per ingest WriteBatch and sequence updates per scoring batch, and how batches are cut.

    ``*_within_s`` 0 (default): natural batching - a batch is handed over when it is full or as soon as no further
    record waits in the worker's stream buffer, so a worker that keeps up adds no wait and one that falls behind
    takes everything that arrived while it handled the previous batch. ``> 0`` (at most 1 s): faust's
    ``noack_take``, which waits up to this long (seconds) for a batch to fill; its batches stay small under load
    (37-54 records per 5 ms take on an ingest worker; one worker 1,854-2,436 events/s against 3,812-4,735 with
    natural batching and direct delivery, docs/benchmarks.md "Ingest"). See :mod:`adrec_stream.stream.batches`.

    ``store_write_attempts``: tries of one batch's RocksDB write before the ingest agent fails (a failed
    write changes nothing, so retrying is safe); the worker then exits and resumes from its committed offset.

    ``gc_young_threshold``: allocations between two young-generation garbage collections in the ingest and score
    workers (at most 10,000,000), which also freeze the objects built at start (``gc.freeze``); 0 keeps CPython's
    defaults (700, no freeze). A batch of 1,000 clicks allocates tens of thousands of short-lived containers: with the defaults an
    ingest worker spent 2.5 s of a 100,000-event run in ≈ 1,450 collections, 0.05 s in 2 with 50,000
    (``gc_collections`` / ``gc_s_total`` in the ``worker_stats`` log line; docs/benchmarks.md "Ingest").
    """

    ingest_max_records: PosInt = 1000
    ingest_within_s: BatchWait = 0.0
    score_max_users: PosInt = 256
    score_within_s: BatchWait = 0.0
    produce_linger_s: NonNegFloat = 0.002
    produce_max_batch_bytes: Annotated[int, Field(ge=16384, le=16 * 1024 * 1024)] = 1_048_576
    store_write_attempts: PosInt = 3
    gc_young_threshold: Annotated[int, Field(ge=0, le=10_000_000)] = 50_000


class ScoringConfig(StrictModel):
    """What the score worker serves.

    ``seen_items``: ``exclude`` leaves every item of the user's stored window out of the list (the default: a
    recommendations topic should not offer what the user just clicked), ``exclude_last`` only the last
    ``exclude_last_n`` clicked items, ``keep`` nothing (repeat-consumption catalogues: music, groceries). The
    offline protocol of the paper (``adrec-stream evaluate``) does not exclude.
    ``sampling_steps``: reverse diffusion steps of the last token (default 2; null = the model's T, 32 in the
    paper). Measured on the test splits (docs/sampling-steps.md): HR/NDCG@10 and @20 at 2 steps equal 32 steps
    within the seed noise on ml-100k and beauty, at 1.8x (ml-100k) and 2.9x (beauty) the users/s; 2 steps keep the
    chain's final t = 0 prediction, which 1 step does not.
    ``deterministic``: start the reverse process from zeros without noise (null = the model config's choice).
    ``threads``: torch CPU threads of the score worker.
    ``deduplicate_users``: score only the newest window of a user within a batch (the other updates of that user
    get the same list, marked ``superseded_by``); off, every update is scored on its own window (a replay faster
    than real time, such as ``evaluate-replay --through-kafka``, switches it off so that every click has the list
    made right after it; so does ``adrec-stream demo``, whose replay of a rating log runs far faster than the log's
    clock).
    """

    seen_items: Literal["exclude", "exclude_last", "keep"] = "exclude"
    exclude_last_n: PosInt = 1
    sampling_steps: PosInt | None = 2
    deterministic: bool | None = None
    threads: PosInt = 1
    deduplicate_users: bool = True


class ModelVersionsConfig(StrictModel):
    """How a newly published model version reaches the score workers (``model_versions:`` section).

    ``announce``: the fine-tune worker and ``adrec-stream model publish|rollback`` produce an announcement (version,
    registry URL, sha256, published_ts) on ``topics.model_versions`` after each publish. ``follow``: every score
    worker reads that topic without a consumer group (each sees every announcement) and switches to an announced
    version at once. ``registry_poll``: score workers also check the registry every ``registry_poll_s`` seconds (the
    fallback that makes a missed announcement converge; false: announcements only). Score workers never move to an
    older version unless ``LATEST`` names it as a rollback.
    """

    announce: bool = True
    follow: bool = True
    registry_poll: bool = True


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
    partition waits for the previous owner to release that partition's store before failing. ``state``: changelog,
    restore, standby replicas and the partition-count guard (:class:`StateConfig`).
    ``finetune`` configures the fine-tune worker (:class:`~adrec_stream.incremental.config.FinetuneConfig`);
    ``ops`` the metrics / health endpoints, ``adrec-stream status`` and the dashboard
    (:class:`~adrec_stream.ops.config.OpsConfig`).
    ``registry_dir``: the model registry, a folder (shared file system) or an fsspec URL (``s3://bucket/prefix``,
    ``file:///mnt/models``; :func:`~adrec_stream.serving.registry.open_registry`); ``registry_cache_dir``: where
    score and fine-tune workers keep verified downloads of a URL registry (None: ``<state_dir>/registry-cache``).
    ``model_versions``: announcements of new versions (:class:`ModelVersionsConfig`). ``security``: TLS / SASL of
    every Kafka client (:class:`~adrec_stream.broker.security.SecurityConfig`; credentials only from the
    environment: a credential-like key anywhere in the file is refused).
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
    state: StateConfig = StateConfig()
    registry_dir: Annotated[str, Field(min_length=1)] = "var/registry"
    registry_cache_dir: str | None = None
    registry_poll_s: PosFloat = 5.0
    model_versions: ModelVersionsConfig = ModelVersionsConfig()
    security: SecurityConfig = SecurityConfig()
    window: PosInt = 200
    item_id_type: Literal["int", "str"] = "int"
    max_event_bytes: Annotated[int, Field(ge=64, le=16 * 1024 * 1024)] = 65536
    top_k: Annotated[int, Field(ge=1, le=1000)] = 10
    device: str = "cpu"
    scoring: ScoringConfig = ScoringConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    ops: OpsConfig = OpsConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        found = find_credential_keys(data)
        if found:
            raise ValueError(f"{', '.join(found)}: credentials must not be written in the config file; put them in the "
                             "environment variables named by security.username_env / password_env / "
                             "ssl_key_password_env (default ADREC_KAFKA_SASL_USERNAME, ADREC_KAFKA_SASL_PASSWORD, "
                             "ADREC_KAFKA_SSL_KEY_PASSWORD) or in files named by <NAME>_FILE, and remove the key")
        return data

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
        """``bootstrap_servers`` split on commas, whitespace and listener schemes (``SASL_SSL://``) stripped."""
        return [split_listener(s)[1] for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def registry_cache(self) -> str:
        """``registry_cache_dir``, or ``<state_dir>/registry-cache`` when unset."""
        return self.registry_cache_dir or str(Path(self.state_dir) / "registry-cache")

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
    def _check_servers(self) -> StreamConfig:
        for s in self.bootstrap_list or [""]:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"bootstrap_servers entry {s!r} is not host:port")
        check_listeners(self.bootstrap_servers, self.security, embedded=self.broker.embedded)
        return self


def load_stream_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StreamConfig:
    """Load a :class:`StreamConfig` from YAML (default ``configs/stream.yaml``) with dotted ``overrides``.

    Raises:
        ConfigError: file missing, invalid YAML, unknown keys, ill-typed or out-of-range values.
    """
    return load_config(path or DEFAULT_STREAM_CONFIG, StreamConfig, overrides)
