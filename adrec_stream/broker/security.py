"""Connection security of every Kafka client the product creates: TLS and SASL (PLAIN, SCRAM-SHA-256/512).

The ``security:`` section of the stream config (:class:`SecurityConfig`) says *how* to connect: the protocol, the
SASL mechanism, the paths of the CA / client certificate / client key files, and the NAMES of the environment
variables that hold the credentials. The credentials themselves are never in the config file: they are read at
start from the environment (``ADREC_KAFKA_SASL_USERNAME``, ``ADREC_KAFKA_SASL_PASSWORD``, ``ADREC_KAFKA_SSL_KEY_PASSWORD``
by default) or from the file that ``<NAME>_FILE`` names (a mounted secret; one trailing newline is dropped).
:func:`resolve_security` turns the section into a :class:`KafkaSecurity`, whose ``repr`` and :meth:`KafkaSecurity.describe`
(what the workers log) never contain a secret, and which builds the keyword arguments of each client library:

- :meth:`KafkaSecurity.kafka_python` for ``KafkaProducer`` / ``KafkaConsumer`` / ``KafkaAdminClient`` (kafka-python);
- :meth:`KafkaSecurity.aiokafka` for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` (an ``ssl.SSLContext``);
- :meth:`KafkaSecurity.faust_credentials` for the Faust apps' ``broker_credentials``.

:func:`kafka_client_kwargs` is the one helper the call sites use: bootstrap servers + the security arguments for a
stream config.

Bootstrap entries may name their listener the way Kafka's ``listeners`` setting does (``SASL_SSL://host:9096``);
:func:`check_listeners` (run when the stream config is loaded) refuses an entry whose scheme disagrees with
``security_protocol`` - above all a plaintext listener with TLS on - and a non-PLAINTEXT protocol for the embedded
broker (Tansu listens in plaintext only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from adrec_stream.config import StrictModel
from adrec_stream.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_ENV_NAME = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_SCHEME = re.compile(r"^([A-Za-z_]+)://(.*)$")
#: config keys that look like a credential (refused anywhere in the stream config file)
CREDENTIAL_KEY = re.compile(r"(^|_)(password|passwd|pass|secret|username|user|token|credentials?|api_key)($|_)",
                            re.IGNORECASE)



def uses_tls(protocol: str) -> bool:
    """True for the Kafka security protocols that encrypt the connection: SSL and SASL_SSL."""
    return protocol in ("SSL", "SASL_SSL")


def uses_sasl(protocol: str) -> bool:
    """True for the Kafka security protocols that authenticate with SASL: SASL_PLAINTEXT and SASL_SSL."""
    return protocol.startswith("SASL_")

class SecurityConfig(StrictModel):
    """How clients authenticate to and encrypt their connections with the cluster (``security:`` section).

    ``security_protocol``: PLAINTEXT (default; the embedded broker), SSL (TLS), SASL_PLAINTEXT (SASL without TLS:
    only on a trusted network) or SASL_SSL. ``sasl_mechanism``: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required
    with SASL_*, refused otherwise). ``ssl_cafile``: PEM file of the CA that signed the brokers' certificates (None:
    the system's trust store); ``ssl_certfile`` / ``ssl_keyfile``: the client's certificate and key for mutual TLS
    (the key may be encrypted: its password comes from ``ssl_key_password_env``); ``ssl_check_hostname``: check the
    broker certificate's host name (leave on). ``username_env`` / ``password_env`` / ``ssl_key_password_env``: names
    of the environment variables holding the SASL username / password and the key password; ``<NAME>_FILE``
    instead names a file holding the value.
    """

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    username_env: _ENV_NAME = "ADREC_KAFKA_SASL_USERNAME"
    password_env: _ENV_NAME = "ADREC_KAFKA_SASL_PASSWORD"
    ssl_key_password_env: _ENV_NAME = "ADREC_KAFKA_SSL_KEY_PASSWORD"

    @property
    def tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return uses_tls(self.security_protocol)

    @property
    def sasl(self) -> bool:
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return uses_sasl(self.security_protocol)

    @model_validator(mode="after")
    def _check(self) -> SecurityConfig:
        p = self.security_protocol
        if self.sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {p} needs sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        if not self.sasl and self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} is set but security_protocol {p} does not use SASL; "
                             "use SASL_SSL (or SASL_PLAINTEXT), or remove sasl_mechanism")
        files = {k: getattr(self, k) for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, k)}
        if files and not self.tls:
            raise ValueError(f"{', '.join(files)} set but security_protocol {p} does not use TLS; use SSL or SASL_SSL, "
                             "or remove them")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate of that key)")
        return self


def split_listener(entry: str) -> tuple[str | None, str]:
    """``"SASL_SSL://h:9096"`` -> ``("SASL_SSL", "h:9096")``; ``"h:9092"`` -> ``(None, "h:9092")``."""
    m = _SCHEME.match(entry.strip())
    return (m.group(1).upper(), m.group(2)) if m else (None, entry.strip())


def check_listeners(bootstrap_servers: str, security: SecurityConfig, *, embedded: bool) -> None:
    """Refuse a bootstrap list that cannot work with ``security`` (called when the stream config is validated).

    Raises:
        ValueError: an entry's listener scheme is unknown or differs from ``security_protocol`` (e.g.
            ``PLAINTEXT://`` with TLS on), or the embedded broker is asked for anything but PLAINTEXT.
    """
    p = security.security_protocol
    if embedded and p != "PLAINTEXT":
        raise ValueError(f"security.security_protocol is {p} but the embedded broker (broker.embedded: true) listens "
                         "in PLAINTEXT only; set broker.embedded: false and bootstrap_servers to your cluster, or use "
                         "PLAINTEXT")
    for entry in bootstrap_servers.split(","):
        scheme, _ = split_listener(entry)
        if scheme is None:
            continue
        if scheme not in PROTOCOLS:
            raise ValueError(f"bootstrap_servers entry {entry.strip()!r}: unknown listener scheme {scheme}; use one of "
                             f"{', '.join(PROTOCOLS)} or write host:port")
        if scheme != p:
            what = ("a plaintext listener while TLS is on" if security.tls and scheme in ("PLAINTEXT", "SASL_PLAINTEXT")
                    else f"a {scheme} listener")
            raise ValueError(f"bootstrap_servers entry {entry.strip()!r} is {what} (security.security_protocol: {p}); "
                             f"point it at the cluster's {p} listener or change security_protocol")


def find_credential_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the keys in a loaded config mapping that look like credentials (``password``,
    ``sasl_plain_username``, ``token``...); the ``*_env`` keys that NAME environment variables are allowed."""
    found: list[str] = []
    if isinstance(data, Mapping):
        for k, v in data.items():
            key = str(k)
            path = f"{prefix}{key}"
            if CREDENTIAL_KEY.search(key) and not key.endswith("_env"):
                found.append(path)
            found.extend(find_credential_keys(v, f"{path}."))
    return found


def read_secret(name: str, env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The value of environment variable ``name``, or of the file that ``<name>_FILE`` names.

    Returns:
        ``(value, source)``: source is ``"env NAME"`` or ``"file PATH"`` (for logs; never the value);
        ``(None, None)`` when neither is set.

    Raises:
        ConfigError: both are set, the file cannot be read, or the value is empty.
    """
    env = os.environ if env is None else env
    direct, path = env.get(name), env.get(f"{name}_FILE")
    if direct is not None and path is not None:
        raise ConfigError(f"both {name} and {name}_FILE are set; set only one of them")
    if path is not None:
        try:
            value = Path(path).read_text().removesuffix("\n").removesuffix("\r")
        except OSError as err:
            raise ConfigError(f"{name}_FILE names {path}, which cannot be read ({err.strerror}); fix the path or the "
                              "file's permissions") from None
        source = f"file {path}"
    elif direct is not None:
        value, source = direct, f"env {name}"
    else:
        return None, None
    if not value:
        raise ConfigError(f"{source} is empty; put the credential there")
    return value, source


@dataclass(frozen=True, repr=False)
class KafkaSecurity:
    """Resolved connection security: the config's choices plus the credentials read from the environment.

    ``repr()`` and :meth:`describe` never include ``password`` or ``key_password``.
    """

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True
    username: str | None = None
    password: str | None = field(default=None)
    key_password: str | None = field(default=None)
    sources: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"KafkaSecurity({self.describe()})"

    @property
    def tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return uses_tls(self.protocol)

    @property
    def sasl(self) -> bool:
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return uses_sasl(self.protocol)

    def describe(self) -> dict[str, Any]:
        """What may be logged: protocol, mechanism, file paths, where each credential came from (never a secret)."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.mechanism:
            out["sasl_mechanism"] = self.mechanism
        for k in ("cafile", "certfile", "keyfile"):
            if getattr(self, k):
                out[f"ssl_{k}"] = getattr(self, k)
        if self.sources:
            out["credentials_from"] = dict(self.sources)
        return out

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            out.update(ssl_check_hostname=self.check_hostname, ssl_cafile=self.cafile, ssl_certfile=self.certfile,
                       ssl_keyfile=self.keyfile, ssl_password=self.key_password)
        if self.sasl:
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        return out

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` for TLS (None without TLS): the CA file (or the system's trust store), the client
        certificate and key, host name checking as configured.

        Raises:
            ConfigError: a certificate or key file cannot be loaded (wrong format, wrong key password).
        """
        if not self.tls:
            return None
        import ssl  # noqa: PLC0415

        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
        ctx.check_hostname = self.check_hostname
        if not self.check_hostname:
            ctx.verify_mode = ssl.CERT_REQUIRED  # still verify the chain
        if self.certfile:
            try:
                ctx.load_cert_chain(self.certfile, self.keyfile, password=self.key_password)
            except (ssl.SSLError, OSError) as err:
                raise ConfigError(f"cannot load the client certificate {self.certfile} / key {self.keyfile}: "
                                  f"{err.__class__.__name__}; check the files (PEM) and the key password") from None
        return ctx

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's ``AIOKafkaProducer`` and ``AIOKafkaConsumer``."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        if self.sasl:
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        return out

    def faust_credentials(self) -> Any:
        """The Faust app's ``broker_credentials`` (None for PLAINTEXT)."""
        if self.protocol == "PLAINTEXT":
            return None
        import faust  # noqa: PLC0415

        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         ssl_context=self.ssl_context(), mechanism=self.mechanism)
        return faust.SSLCredentials(self.ssl_context())


def resolve_security(sec: SecurityConfig, env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """Read the credentials ``sec`` names from ``env`` (default ``os.environ``) and check the files it names.

    Raises:
        ConfigError: SASL without a username or password in the environment (the variables are named), a
            credential set both directly and as ``_FILE``, an unreadable secret file, or a CA / certificate / key
            file that does not exist.
    """
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(sec, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"security.{key}: {path} is not a file; fix the path (TLS needs it)")
    sources: list[tuple[str, str]] = []
    username = password = key_password = None
    if sec.sasl:
        username, u_src = read_secret(sec.username_env, env)
        password, p_src = read_secret(sec.password_env, env)
        missing = [n for n, v in ((sec.username_env, username), (sec.password_env, password)) if v is None]
        if missing:
            raise ConfigError(f"security_protocol {sec.security_protocol} needs SASL credentials: set "
                              + " and ".join(f"{n} (or {n}_FILE)" for n in missing)
                              + " in the environment (never in the config file)")
        sources += [("username", str(u_src)), ("password", str(p_src))]
    if sec.tls and sec.ssl_keyfile:
        key_password, k_src = read_secret(sec.ssl_key_password_env, env)
        if k_src:
            sources.append(("ssl_key_password", k_src))
    return KafkaSecurity(protocol=sec.security_protocol, mechanism=sec.sasl_mechanism, cafile=sec.ssl_cafile,
                         certfile=sec.ssl_certfile, keyfile=sec.ssl_keyfile, check_hostname=sec.ssl_check_hostname,
                         username=username, password=password, key_password=key_password, sources=tuple(sources))


def kafka_client_kwargs(cfg: Any, flavour: Literal["kafka-python", "aiokafka"] = "kafka-python", *,
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything a Kafka client of the product needs to reach the cluster of stream config ``cfg``:
    ``bootstrap_servers`` (a list, :func:`~adrec_stream.broker.process.effective_bootstrap`) and the security
    arguments of ``flavour`` (kafka-python or aiokafka). Add the client's own settings (group, timeouts) to it.

    Raises:
        ConfigError: see :func:`resolve_security`.
    """
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415

    sec = resolve_security(cfg.security, env)
    kw = sec.kafka_python() if flavour == "kafka-python" else sec.aiokafka()
    return {"bootstrap_servers": effective_bootstrap(cfg).split(","), **kw}


def security_of(cfg: Any, env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """:func:`resolve_security` of a stream config's ``security`` section (PLAINTEXT when it has none)."""
    sec = getattr(cfg, "security", None)
    return resolve_security(sec, env) if sec is not None else KafkaSecurity()
