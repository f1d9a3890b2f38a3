"""TLS / SASL settings of every Kafka client (adrec_stream.broker.security) and their checks in the stream config.

No TLS or SASL Kafka listener can run here (the embedded Tansu broker speaks PLAINTEXT only), so these tests check
what the product does before and around a handshake: refusals at load, credentials read from the environment or
files, the keyword arguments / SSL context / Faust credentials built for each protocol, and - against the real
embedded broker, which refuses the SASL handshake - that a worker given a secret never writes it to its log.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, write_stream_config

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.broker.security import (
    SecurityConfig,
    kafka_client_kwargs,
    read_secret,
    resolve_security,
)
from adrec_stream.errors import ConfigError
from adrec_stream.stream.config import StreamConfig, load_stream_config

EXTERNAL = {"broker": {"embedded": False}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A self-signed CA certificate and a client certificate + key (openssl), as PEM files."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    subj = "/CN=adrec-test"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "client.key"),
                    "-out", str(d / "client.pem"), "-days", "2", "-subj", subj], check=True, capture_output=True)
    shutil.copy(d / "client.pem", d / "ca.pem")
    return d


def _yaml(tmp_path, text: str):
    p = tmp_path / "stream.yaml"
    p.write_text(text)
    return p


# ------------------------------------------------------------------ refusals when the config is loaded
def test_tls_with_a_plaintext_listener_is_refused(tmp_path):
    path = _yaml(tmp_path, "bootstrap_servers: PLAINTEXT://k1:9092,SSL://k2:9093\nbroker: {embedded: false}\n"
                           "security: {security_protocol: SSL}\n")
    with pytest.raises(ConfigError, match=r"'PLAINTEXT://k1:9092' is a plaintext listener while TLS is on "
                                          r"\(security.security_protocol: SSL\)"):
        load_stream_config(path)
    path = _yaml(tmp_path, "bootstrap_servers: SASL_PLAINTEXT://k1:9094\nbroker: {embedded: false}\n"
                           "security: {security_protocol: SASL_SSL, sasl_mechanism: SCRAM-SHA-512}\n")
    with pytest.raises(ConfigError, match="plaintext listener while TLS is on"):
        load_stream_config(path)
    with pytest.raises(ConfigError, match="unknown listener scheme HTTP"):
        load_stream_config(_yaml(tmp_path, "bootstrap_servers: http://k1:9092\nbroker: {embedded: false}\n"))


def test_embedded_broker_is_plaintext_only_and_sasl_needs_a_mechanism(tmp_path):
    with pytest.raises(ConfigError, match="embedded broker .* listens in PLAINTEXT only"):
        load_stream_config(_yaml(tmp_path, "security: {security_protocol: SSL}\n"))
    with pytest.raises(ConfigError, match="security: security_protocol SASL_SSL needs sasl_mechanism"):
        load_stream_config(_yaml(tmp_path, "bootstrap_servers: k1:9096\nbroker: {embedded: false}\n"
                                           "security: {security_protocol: SASL_SSL}\n"))
    with pytest.raises(ValueError, match="does not use SASL"):
        SecurityConfig(security_protocol="SSL", sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="ssl_cafile set but security_protocol PLAINTEXT does not use TLS"):
        SecurityConfig(ssl_cafile="/etc/ca.pem")
    with pytest.raises(ValueError, match="ssl_keyfile needs ssl_certfile"):
        SecurityConfig(security_protocol="SSL", ssl_keyfile="/etc/k.pem")


@pytest.mark.parametrize("snippet, key", [
    ("security: {security_protocol: SASL_SSL, sasl_mechanism: PLAIN, sasl_plain_password: hunter2}\n",
     "security.sasl_plain_password"),
    ("security: {security_protocol: SASL_SSL, sasl_mechanism: PLAIN, username: adrec}\n", "security.username"),
    ("password: hunter2\n", "password"),
    ("ops: {api_token: abc}\n", "ops.api_token"),
])
def test_credentials_in_the_config_file_are_refused(tmp_path, snippet, key):
    path = _yaml(tmp_path, "bootstrap_servers: k1:9093\nbroker: {embedded: false}\n" + snippet)
    with pytest.raises(ConfigError) as exc:
        load_stream_config(path)
    msg = str(exc.value)
    assert f"{key}: credentials must not be written in the config file" in msg and "ADREC_KAFKA_SASL_PASSWORD" in msg
    assert "hunter2" not in msg


def test_listener_schemes_that_match_are_stripped_for_the_clients():
    cfg = StreamConfig.model_validate({**EXTERNAL, "bootstrap_servers": "SASL_SSL://k1:9096, SASL_SSL://k2:9096",
                                       "security": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256"}})
    assert effective_bootstrap(cfg) == "k1:9096,k2:9096" and cfg.bootstrap_list == ["k1:9096", "k2:9096"]


# ------------------------------------------------------------------ credentials from the environment / files
def test_read_secret_from_env_or_file(tmp_path):
    assert read_secret("PW", {"PW": "s3cret"}) == ("s3cret", "env PW")
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert read_secret("PW", {"PW_FILE": str(f)}) == ("from-file", f"file {f}")
    assert read_secret("PW", {}) == (None, None)
    with pytest.raises(ConfigError, match="both PW and PW_FILE are set"):
        read_secret("PW", {"PW": "a", "PW_FILE": str(f)})
    with pytest.raises(ConfigError, match=r"PW_FILE names .*/absent, which cannot be read"):
        read_secret("PW", {"PW_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="env PW is empty"):
        read_secret("PW", {"PW": ""})


def test_sasl_without_credentials_names_the_variables():
    sec = SecurityConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", password_env="MY_PW")
    with pytest.raises(ConfigError, match=r"set ADREC_KAFKA_SASL_USERNAME \(or ADREC_KAFKA_SASL_USERNAME_FILE\) and "
                                          r"MY_PW \(or MY_PW_FILE\) in the environment"):
        resolve_security(sec, {})
    with pytest.raises(ConfigError, match=r"set MY_PW \(or MY_PW_FILE\)"):
        resolve_security(sec, {"ADREC_KAFKA_SASL_USERNAME": "adrec"})


def test_missing_tls_file_is_refused(tmp_path):
    sec = SecurityConfig(security_protocol="SSL", ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"security.ssl_cafile: .*nope.pem is not a file"):
        resolve_security(sec, {})


# ------------------------------------------------------------------ the one helper, per protocol
def test_plaintext_kwargs():
    cfg = StreamConfig.model_validate({**EXTERNAL, "bootstrap_servers": "k1:9092,k2:9092"})
    assert kafka_client_kwargs(cfg, env={}) == {"bootstrap_servers": ["k1:9092", "k2:9092"],
                                                "security_protocol": "PLAINTEXT"}
    assert kafka_client_kwargs(cfg, "aiokafka", env={}) == {"bootstrap_servers": ["k1:9092", "k2:9092"],
                                                            "security_protocol": "PLAINTEXT"}
    assert resolve_security(cfg.security, {}).faust_credentials() is None


def test_ssl_kwargs_with_client_certificate(pki):
    cfg = StreamConfig.model_validate({**EXTERNAL, "bootstrap_servers": "SSL://k1:9093", "security": {
        "security_protocol": "SSL", "ssl_cafile": str(pki / "ca.pem"), "ssl_certfile": str(pki / "client.pem"),
        "ssl_keyfile": str(pki / "client.key")}})
    env = {"ADREC_KAFKA_SSL_KEY_PASSWORD": "keypw"}
    assert kafka_client_kwargs(cfg, env=env) == {
        "bootstrap_servers": ["k1:9093"], "security_protocol": "SSL", "ssl_check_hostname": True,
        "ssl_cafile": str(pki / "ca.pem"), "ssl_certfile": str(pki / "client.pem"),
        "ssl_keyfile": str(pki / "client.key"), "ssl_password": "keypw"}
    aio = kafka_client_kwargs(cfg, "aiokafka", env={})  # the test key has no password
    assert set(aio) == {"bootstrap_servers", "security_protocol", "ssl_context"} and aio["security_protocol"] == "SSL"
    ctx = aio["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "adrec-test"),),)]
    creds = resolve_security(cfg.security, {}).faust_credentials()
    assert type(creds).__name__ == "SSLCredentials" and creds.context.verify_mode == ssl.CERT_REQUIRED
    # a wrong key password: one clear error, not an ssl traceback
    bad = resolve_security(cfg.security.model_copy(update={"ssl_keyfile": str(pki / "ca.pem")}), {})
    with pytest.raises(ConfigError, match="cannot load the client certificate"):
        bad.ssl_context()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_kwargs(pki, tmp_path, mechanism):
    pw = tmp_path / "pw"
    pw.write_text("p4ss-from-file\n")
    cfg = StreamConfig.model_validate({**EXTERNAL, "bootstrap_servers": "k1:9096", "security": {
        "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "ssl_cafile": str(pki / "ca.pem")}})
    env = {"ADREC_KAFKA_SASL_USERNAME": "adrec", "ADREC_KAFKA_SASL_PASSWORD_FILE": str(pw)}
    kw = kafka_client_kwargs(cfg, env=env)
    assert kw == {"bootstrap_servers": ["k1:9096"], "security_protocol": "SASL_SSL", "ssl_check_hostname": True,
                  "ssl_cafile": str(pki / "ca.pem"), "ssl_certfile": None, "ssl_keyfile": None, "ssl_password": None,
                  "sasl_mechanism": mechanism, "sasl_plain_username": "adrec", "sasl_plain_password": "p4ss-from-file"}
    aio = kafka_client_kwargs(cfg, "aiokafka", env=env)
    assert {k: v for k, v in aio.items() if k != "ssl_context"} == {
        "bootstrap_servers": ["k1:9096"], "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
        "sasl_plain_username": "adrec", "sasl_plain_password": "p4ss-from-file"}
    assert isinstance(aio["ssl_context"], ssl.SSLContext)
    sec = resolve_security(cfg.security, env)
    creds = sec.faust_credentials()
    assert (type(creds).__name__, creds.mechanism.value, creds.username, creds.password) == (
        "SASLCredentials", mechanism, "adrec", "p4ss-from-file")
    assert creds.protocol.value == "SASL_SSL"
    # what may be logged: where the credentials came from, never them
    assert sec.describe() == {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
                              "ssl_cafile": str(pki / "ca.pem"),
                              "credentials_from": {"username": "env ADREC_KAFKA_SASL_USERNAME",
                                                   "password": f"file {pw}"}}
    assert "p4ss" not in repr(sec) and "p4ss" not in repr(creds)


def test_sasl_plaintext_kwargs_have_no_tls_settings():
    cfg = StreamConfig.model_validate({**EXTERNAL, "bootstrap_servers": "SASL_PLAINTEXT://k1:9094", "security": {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "username_env": "U", "password_env": "P"}})
    env = {"U": "adrec", "P": "pw"}
    assert kafka_client_kwargs(cfg, env=env) == {"bootstrap_servers": ["k1:9094"], "security_protocol": "SASL_PLAINTEXT",
                                                 "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "adrec",
                                                 "sasl_plain_password": "pw"}
    assert resolve_security(cfg.security, env).faust_credentials().ssl_context is None


# ------------------------------------------------------------------ a real worker: the secret stays out of its log
SECRET = "hunter2-Zq8-never-in-a-log"


@pytest.mark.broker
def test_worker_never_logs_the_sasl_password(stream_config, tmp_path):
    """The embedded broker refuses the SASL handshake, so the worker exits 2 with one line; its whole output at
    DEBUG level (the Kafka client's own log lines included) must not contain the password."""
    cfg = stream_config.model_copy(update={
        "bootstrap_servers": f"SASL_PLAINTEXT://{effective_bootstrap(stream_config)}",
        "broker": stream_config.broker.model_copy(update={"embedded": False}),
        "security": SecurityConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512")})
    path = write_stream_config(cfg, tmp_path / "sasl.yaml")
    env = {**os.environ, "ADREC_KAFKA_SASL_USERNAME": "adrec-worker", "ADREC_KAFKA_SASL_PASSWORD": SECRET,
           "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "--log-level", "DEBUG", "worker", "score",
                        "--config", str(path)], env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-2000:]
    assert SECRET not in out
    # the credentials were used: the worker logged where they came from, and the broker saw a SCRAM handshake
    assert '"credentials_from": {"username": "env ADREC_KAFKA_SASL_USERNAME", "password": "env ADREC_KAFKA_SASL_PASSWORD"}' in out
    assert "SaslHandshake failed: UnsupportedSaslMechanismError" in out
    assert "cannot connect to the Kafka cluster at" in out and "with security_protocol SASL_PLAINTEXT" in out
    assert time.time() - t0 < 60
