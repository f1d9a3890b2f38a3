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


def test_section_level_check_errors_name_the_section_without_dumping_it(tmp_path: Path) -> None:
    """A check across a section's keys (a model validator) reports its own message, credits --set when a key
    of that section came from it, and does not dump the whole section (a fresh user's report)."""
    from adrec_stream.training.config import load_experiment

    cfg_path = tmp_path / "e.yaml"
    cfg_path.write_text("model: {hidden_size: 128}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(cfg_path, parse_overrides(["model.num_heads=3"]))
    msg = str(info.value)
    assert msg.endswith("e.yaml (value from --set): model: num_heads must be >= 1 and divide hidden_size=128 (got 3)")
    assert "Value error" not in msg and "{" not in msg
    cfg_path.write_text("model: {hidden_size: 128, num_heads: 3}\n")
    with pytest.raises(ConfigError, match=r"^.*e\.yaml: model: num_heads"):  # the file's value: the file is named
        load_experiment(cfg_path)
    cfg_path.write_text("model: {hidden_size: 128}\n")
    for bad in ("model.init_std=0", "model.init_std=.inf", "train.pretrain_init_std=1e30", "train.pretrain_init_std=.nan"):
        key = bad.split("=")[0]
        with pytest.raises(ConfigError, match=rf"e\.yaml \(value from --set\): {key.replace('.', '[.]')}: "):
            load_experiment(cfg_path, parse_overrides([bad]))
