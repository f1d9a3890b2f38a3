"""The shared YAML config loader and the command-line ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from adrec_stream.config import StrictModel, load_config, parse_overrides
from adrec_stream.errors import ConfigError


class _Section(StrictModel):
    port: int = 9092
    name: str = "clicks"


class _Root(StrictModel):
    window: int = 200
    broker: _Section = _Section()


def test_parse_overrides_parses_values_as_yaml() -> None:
    assert parse_overrides(["broker.port=19092", "window=50", "broker.name=a=b", "x= true"]) == {
        "broker.port": 19092, "window": 50, "broker.name": "a=b", "x": True}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("bad", ["window", "=5", " =5", "k=[1, 2"])
def test_parse_overrides_refuses_malformed_items(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([bad])


def test_overrides_apply_to_nested_keys_and_are_validated(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("window: 10\n")
    cfg = load_config(cfg_path, _Root, parse_overrides(["broker.port=1234"]))
    assert (cfg.window, cfg.broker.port, cfg.broker.name) == (10, 1234, "clicks")
    with pytest.raises(ConfigError, match=r"c\.yaml \(value from --set\): broker\.port: .*'fast'"):
        load_config(cfg_path, _Root, parse_overrides(["broker.port=fast"]))
    with pytest.raises(ConfigError, match=r"c\.yaml \(value from --set\): broker\.prot: unknown key"):
        load_config(cfg_path, _Root, parse_overrides(["broker.prot=1"]))
    cfg_path.write_text("window: ten\n")  # a bad value in the file is still reported against the file
    with pytest.raises(ConfigError, match=r"c\.yaml: window: "):  # not "(value from --set)"
        load_config(cfg_path, _Root, parse_overrides(["broker.port=1"]))
