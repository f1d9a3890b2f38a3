"""YAML config loading with validation (pydantic models, unknown keys refused).

Each concern defines its own pydantic model (``extra="forbid"``, strict types) next to its
code; this module turns a YAML file into one of them and reports problems as one clear
:class:`~adrec_stream.errors.ConfigError` naming the file, the key and the expected type.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from adrec_stream.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

#: Folder of the YAML configs shipped with the project (``configs/`` at the repository root).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class StrictModel(BaseModel):
    """Base for config sections: unknown keys and ill-typed values are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def format_validation_error(err: ValidationError, source: str, overridden: Iterable[str] = ()) -> str:
    """Render a pydantic error as ``source: key.path: problem`` lines; for a key given with ``--set`` (in
    ``overridden``) the source reads ``source (value from --set)``, so the file is not blamed for it."""
    overridden = set(overridden)
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the shipped configs/ for valid keys)"
        section_check = isinstance(e.get("input"), dict)  # a check across a section's keys (model validator)
        if section_check:
            msg = msg.removeprefix("Value error, ")
        from_set = loc in overridden or (section_check and any(k.startswith(loc + ".") for k in overridden))
        where = f"{source} (value from --set)" if from_set else source
        got = "" if section_check else f" (got {e.get('input')!r})"
        lines.append(f"{where}: {loc}: {msg}{got}")
    return "\n".join(lines)


def parse_config(data: Any, model: type[M], source: str = "<config>", overridden: Iterable[str] = ()) -> M:
    """Validate a mapping against a config model.

    ``overridden``: dotted keys that came from ``--set`` (named as such in errors).

    Raises:
        ConfigError: not a mapping, unknown keys, or ill-typed values.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, overridden)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Command-line ``--set`` items to dotted overrides for :func:`load_config`.

    ``["broker.port=19092", "window=50"]`` -> ``{"broker.port": 19092, "window": 50}`` (values parsed as YAML).

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (dotted key, YAML value, e.g. train.lr=0.001), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML: {err}") from None
    return out


def load_config(path: str | Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Load a YAML file into ``model``; ``overrides`` (dotted keys) are applied first.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or fails validation.
    """
    p = Path(path)
    if not p.is_file():
        alt = CONFIG_DIR / p.name
        if not p.is_absolute() and alt.is_file():
            p = alt
        else:
            raise ConfigError(f"config file not found: {p} (the shipped configs are in {CONFIG_DIR})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if overrides:
        data = dict(data or {})
        for dotted, value in overrides.items():
            cur = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                cur = cur.setdefault(key, {})
            cur[leaf] = value
    return parse_config(data, model, str(p), overrides or ())
