"""The shared YAML config loader and the command-line ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from adrec_stream.config import StrictModel, load_config, parse_config, parse_overrides
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


def test_a_section_written_twice_is_refused_with_file_line_and_key(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys without a word: a config with `train:` written twice silently lost
    the first section (here its lr); a key written twice kept the last value."""
    from adrec_stream.training.config import load_experiment

    cfg_path = tmp_path / "e.yaml"
    cfg_path.write_text("train:\n  lr: 0.01\nmodel:\n  hidden_size: 64\ntrain:\n  batch_size: 32\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(cfg_path)
    assert str(info.value) == (f"{cfg_path}:5: train: duplicate key (first written on line 1); YAML would keep only "
                               "the last one: merge the two into one")
    cfg_path.write_text("model:\n  hidden_size: 64\n  dropout: 0.1\n  hidden_size: 128\n")
    with pytest.raises(ConfigError, match=rf"^{cfg_path}:4: model\.hidden_size: duplicate key \(first written on line 2\)"):
        load_experiment(cfg_path)
    cfg_path.write_text("model: {hidden_size: 64, hidden_size: 32}\n")  # flow style too
    with pytest.raises(ConfigError, match=rf"^{cfg_path}:1: model\.hidden_size: duplicate key"):
        load_experiment(cfg_path)


@pytest.mark.parametrize(("text", "line", "key", "what"), [
    ("window: 10\nbroker:\n  name: no\n", 3, "broker.name", "'no' would be read as the boolean False"),
    ("broker:\n  name: ON\n", 2, "broker.name", "'ON' would be read as the boolean True"),
    ("window: 1:30\n", 1, "window", "'1:30' would be read as the base-60 number 90"),
    ("window: 010\n", 1, "window", "'010' would be read as the octal number 8"),
    ("window: 10\nbroker:\n  port:\n", 3, "broker.port", "no value (YAML reads it as null)"),
    ("broker:\n  yes: 1\n", 2, "broker.yes", "the key: 'yes' would be read as the boolean True"),
])
def test_yaml_11_surprises_are_refused_with_file_line_and_key(tmp_path: Path, text: str, line: int, key: str,
                                                              what: str) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg_path, _Root)
    assert str(info.value).startswith(f"{cfg_path}:{line}: {key}: {what}")


def test_what_a_person_means_is_kept(tmp_path: Path) -> None:
    """Quoted words are text, true/false are booleans, 1e-3 is a float (a string in YAML 1.1), 0 is zero, a
    leading byte-order mark is ignored, and null written out is null."""
    from adrec_stream.config import load_yaml

    assert load_yaml("a: 'no'\nb: \"on\"\nc: true\nd: False\ne: 1e-3\nf: -5E+4\ng: 0\nh: null\ni: ~\nj: 0.5\n") == {
        "a": "no", "b": "on", "c": True, "d": False, "e": 0.001, "f": -50000.0, "g": 0, "h": None, "i": None,
        "j": 0.5}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_bytes(b"\xef\xbb\xbfwindow: 12\nbroker:\n  name: 'off'\n")
    cfg = load_config(cfg_path, _Root)
    assert (cfg.window, cfg.broker.name) == (12, "off")
    cfg_path.write_bytes("window: 13\n".encode("utf-16"))  # UTF-16 with its byte-order mark
    assert load_config(cfg_path, _Root).window == 13
    assert parse_overrides(["train.lr=1e-3"]) == {"train.lr": 0.001}


def test_set_values_get_the_same_checks_and_a_non_utf8_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides(["broker.name=off"])
    assert str(info.value) == ("--set 'broker.name=off': broker.name: 'off' would be read as the boolean False: write "
                               "true or false for a switch, or quote it ('off') for text")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_bytes(b"window: 10\nbroker:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{cfg_path}: not UTF-8 text at byte 30; save the config as UTF-8$"):
        load_config(cfg_path, _Root)


def test_whole_config_checks_name_the_set_keys_instead_of_root(tmp_path: Path) -> None:
    """A check across the whole stream config (credential keys, listener vs protocol) read
    "stream.yaml: <root>: ..." even when the offending values came from --set."""
    from adrec_stream.stream.config import load_stream_config

    with pytest.raises(ConfigError) as info:
        load_stream_config(overrides={"security.security_protocol": "SSL", "broker.embedded": False,
                                      "bootstrap_servers": "PLAINTEXT://127.0.0.1:9092"})
    msg = str(info.value)
    assert "<root>" not in msg
    assert "stream.yaml with --set bootstrap_servers, broker.embedded, security.security_protocol: " in msg
    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text("password: hunter2\n")
    with pytest.raises(ConfigError) as info:
        load_stream_config(cfg_path)
    assert str(info.value).startswith(f"{cfg_path}: password: credentials must not be written")


def test_unknown_key_names_the_closest_valid_key_of_its_section():
    """A misspelt key names the key meant (a fresh user's `--set model.dropout_mask=...` only got "unknown key");
    with nothing close, the section's keys are listed; nested sections are followed."""
    from adrec_stream.model.config import ModelConfig
    from adrec_stream.training.config import ExperimentConfig

    with pytest.raises(ConfigError, match=r"x.yaml: model.dropout_mask: unknown key \(did you mean 'dropout_masks'\?\)"):
        parse_config({"model": {"dropout_mask": "random_bits"}}, ExperimentConfig, "x.yaml")
    with pytest.raises(ConfigError, match=r"train.pretain_lr: unknown key \(did you mean 'pretrain_lr'\?\)"):
        parse_config({"train": {"pretain_lr": 0.1}}, ExperimentConfig, "x.yaml")
    with pytest.raises(ConfigError, match=r"zzz: unknown key \(valid keys here: kind, hidden_size, max_len,"):
        parse_config({"zzz": 1}, ModelConfig, "x.yaml")
    with pytest.raises(ConfigError, match=r"modle: unknown key \(did you mean 'model'\?\)"):
        parse_config({"modle": {}}, ExperimentConfig, "x.yaml")


@pytest.mark.parametrize("section, key, value", [
    ("train", "pretrain_lr", float("inf")), ("train", "weight_decay", float("nan")),
    ("batch", "produce_linger_s", float("inf")), ("batch", "ingest_within_s", float("inf")),
    ("finetune", "max_seconds", float("inf")),
])
def test_infinite_or_nan_numbers_are_refused_in_every_section(section: str, key: str, value: float):
    """A fresh user's `--set batch.ingest_within_s=inf` was accepted (a batch that waits forever)."""
    from adrec_stream.stream.config import StreamConfig
    from adrec_stream.training.config import ExperimentConfig

    model = ExperimentConfig if section == "train" else StreamConfig
    with pytest.raises(ConfigError, match=rf"{section}.{key}: Input should be a finite number"):
        parse_config({section: {key: value}}, model, "x.yaml")


def test_batch_waits_are_at_most_one_second():
    from adrec_stream.stream.config import StreamConfig

    assert parse_config({"batch": {"score_within_s": 0.005}}, StreamConfig, "x.yaml").batch.score_within_s == 0.005
    with pytest.raises(ConfigError, match=r"batch.score_within_s: Input should be less than or equal to 1"):
        parse_config({"batch": {"score_within_s": 2}}, StreamConfig, "x.yaml")
