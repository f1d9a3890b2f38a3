"""YAML config loading with validation (pydantic models, unknown keys refused).

Each concern defines its own pydantic model (``extra="forbid"``, strict types) next to its
code; this module turns a YAML file into one of them and reports problems as one clear
:class:`~adrec_stream.errors.ConfigError` naming the file, the key and the expected type.

Every config file (and every ``--set`` value) is read by :func:`load_yaml`, which refuses what a person would not
mean, with an error naming the file, the line and the dotted key (YAML 1.1, PyYAML's dialect, would silently
read these as something else):

- a key written twice in one mapping, at any level (YAML keeps the last one without a word: a ``train:``
  section written twice dropped the first);
- ``yes`` / ``no`` / ``on`` / ``off`` in any case, unquoted (YAML 1.1 booleans: ``NO`` the country code, ``on``
  a mode name): write ``true`` / ``false`` for a switch, quote the word for text;
- sexagesimal numbers such as ``1:30`` (read as 90): quote it for text, or write the number;
- integers with a leading zero such as ``010`` (read as octal 8): write the number without the leading zero,
  or quote it for text;
- a key with no value (``lr:`` reads as null): write the value, or ``null`` when none is meant.

Quoted scalars are always text. One YAML 1.1 gap is closed the other way: ``1e-3`` / ``5E4`` (an exponent
without a dot, a string in YAML 1.1) are read as floats, as YAML 1.2 and every person writing them mean. A UTF-8
byte-order mark at the start of a file is ignored (UTF-16/32 files with a mark are read too:
:mod:`adrec_stream.textio`). Dates (``2024-01-02``), hex (``0x1F``) and ``1_000`` keep
their YAML meaning (a date, 31, 1000): no config key expects text of that shape.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from adrec_stream.errors import ConfigError
from adrec_stream.textio import read_text

M = TypeVar("M", bound=BaseModel)

#: Folder of the YAML configs shipped with the project (``configs/`` at the repository root).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


_OCTAL_LOOKING = re.compile(r"[-+]?0[0-9_]+")
_FLOAT_WITH_EXPONENT = re.compile(r"[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+")


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus floats written with an exponent and no dot (``1e-3``)."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(f"^{_FLOAT_WITH_EXPONENT.pattern}$"), list("-+0123456789"))


def _surprise(node: yaml.ScalarNode) -> str | None:
    """What YAML 1.1 would silently make of a plain scalar that a person would not mean, or None."""
    if node.style is not None:  # quoted (or a block scalar): text, as written
        return None
    text = node.value
    if node.tag == "tag:yaml.org,2002:bool" and text.lower() not in ("true", "false"):
        return (f"{text!r} would be read as the boolean {text.lower() in ('yes', 'on', 'y')}: write true or false "
                f"for a switch, or quote it ('{text}') for text")
    if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in text:
        return (f"{text!r} would be read as the base-60 number {yaml.load(text, Loader=_ConfigLoader)!r}: quote it "
                f"('{text}') for text, or write the number")
    if node.tag == "tag:yaml.org,2002:int" and _OCTAL_LOOKING.fullmatch(text) and text.strip("+-0_"):
        return (f"{text!r} would be read as the octal number {yaml.load(text, Loader=_ConfigLoader)!r}: write it "
                f"without the leading zero, or quote it ('{text}') for text")
    if node.tag == "tag:yaml.org,2002:null" and text == "":
        return "no value (YAML reads it as null): write the value, or null if none is meant"
    return None


def _check_node(node: yaml.Node, path: str, source: str, lines: bool, visited: set[int] | None = None) -> None:
    """Raise ConfigError at the first duplicate key or YAML 1.1 surprise under ``node`` (see the module docstring)."""
    visited = set() if visited is None else visited

    def at(n: yaml.Node) -> str:
        return f"{source}:{n.start_mark.line + 1}" if lines else source

    if id(node) in visited:  # an alias of a node already checked (anchors may even be recursive)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                _check_node(value_node, path, source, lines, visited)
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = (key_node.tag, key_node.value)
                label = key_node.value
                problem = _surprise(key_node)
                if problem is not None:
                    raise ConfigError(f"{at(key_node)}: {path + '.' if path else ''}{label or '<empty key>'}: "
                                      f"the key: {problem}")
            else:
                label = yaml.serialize(key_node).strip()
                key = label
            dotted = f"{path}.{label}" if path else str(label)
            if key in seen:
                raise ConfigError(f"{at(key_node)}: {dotted}: duplicate key (first written on line {seen[key]}); "
                                  "YAML would keep only the last one: merge the two into one")
            seen[key] = key_node.start_mark.line + 1
            _check_node(value_node, dotted, source, lines, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_node(item, f"{path}[{i}]", source, lines, visited)
    elif isinstance(node, yaml.ScalarNode):
        problem = _surprise(node)
        if problem is not None:
            raise ConfigError(f"{at(node)}: {path or '<document>'}: {problem}")


def load_yaml(text: str, source: str = "<config>", *, root_key: str = "", lines: bool = True) -> Any:
    """Parse one YAML document the way a person means it (module docstring: duplicate keys and YAML 1.1
    surprises refused).

    Args:
        text: the YAML text (a leading byte-order mark is ignored).
        source: how errors name the input (a file path, or ``--set KEY=VALUE``).
        root_key: dotted key the document sits under (``--set`` values), prefixed to the keys in errors.
        lines: name the line in errors (``source:LINE``); off for one-line inputs such as ``--set`` values.

    Returns:
        The parsed value (None for an empty document).

    Raises:
        ConfigError: not valid YAML, more than one document, a duplicate key or a refused scalar, naming
            ``source``, the line and the dotted key.
    """
    loader = _ConfigLoader(text.removeprefix("\ufeff"))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(node, root_key, source, lines)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


class StrictModel(BaseModel):
    """Base for config sections: unknown keys, ill-typed values and infinite or NaN numbers are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


def _unknown_key_message(model: type[BaseModel] | None, loc: tuple) -> str:
    """"unknown key" with the closest valid key of its section (or the section's keys when none is close)."""
    section = model
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if section is not None else None
        inner = field.annotation if field is not None else None
        section = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    if section is None:
        return "unknown key (check the spelling)"
    keys = list(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (valid keys here: {', '.join(keys)})"


def format_validation_error(err: ValidationError, source: str, overridden: Iterable[str] = (),
                            model: type[BaseModel] | None = None) -> str:
    """Render a pydantic error as ``source: key.path: problem`` lines; for a key given with ``--set`` (in
    ``overridden``) the source reads ``source (value from --set)``, so the file is not blamed for it. With the
    config ``model`` an unknown key names the closest valid key of its section (or lists the section's keys)."""
    overridden = set(overridden)
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = _unknown_key_message(model, tuple(e["loc"]))
        section_check = isinstance(e.get("input"), dict)  # a check across a section's keys (model validator)
        if section_check:
            msg = msg.removeprefix("Value error, ")
        if loc == "<root>":  # a check across the whole config: its message names the keys
            where = f"{source} with --set {', '.join(sorted(overridden))}" if overridden else source
            lines.append(f"{where}: {msg}")
            continue
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
        raise ConfigError(format_validation_error(err, source, overridden, model)) from None


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
        out[key.strip()] = load_yaml(value, f"--set {pair!r}", root_key=key.strip(), lines=False)
    return out


def load_config(path: str | Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Load a YAML file (read by :func:`load_yaml`) into ``model``; ``overrides`` (dotted keys) are applied first.

    Raises:
        ConfigError: the file is missing, unreadable or not UTF-8, is not valid YAML, has a duplicate key or a
            YAML 1.1 surprise (:func:`load_yaml`), or fails validation.
    """
    p = Path(path)
    if not p.is_file():
        alt = CONFIG_DIR / p.name
        if not p.is_absolute() and alt.is_file():
            p = alt
        else:
            raise ConfigError(f"config file not found: {p} (the shipped configs are in {CONFIG_DIR})")
    try:
        text = read_text(p)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not {err.encoding.upper().removesuffix('-SIG')} text at byte {err.start}; save the "
                          "config as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"cannot read the config {p}: {err.strerror}") from None
    data = load_yaml(text, str(p))
    if overrides:
        data = dict(data or {})
        for dotted, value in overrides.items():
            cur = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                cur = cur.setdefault(key, {})
            cur[leaf] = value
    return parse_config(data, model, str(p), overrides or ())
