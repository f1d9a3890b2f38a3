"""Click events on the wire: decoding (total, never crashes), encoding, dead-letter records.

Wire format of a click (Kafka topic ``clicks``): key = user id as UTF-8 (used for partitioning), value =
a JSON object::

    {"user_id": "42", "item_id": "1193", "ts": 978300760, "event_id": "optional-unique-id"}

Decoding rules (decided and tested here; producers should follow them):

The user id, item id and timestamp follow the shared rules of :mod:`adrec_stream.data.events` (the same
functions the file loaders and the replay producer use, so a logged row is either accepted by both with the same
values or refused by both with the same reason):

- ``user_id``: non-empty string (<= 256 characters, no control characters) or integer; integers are
  canonicalised to their decimal string (``42`` -> ``"42"``). Booleans and floats are refused (integers
  beyond 64 bits arrive from the JSON parser as floats and are refused too: send such ids as strings).
- ``item_id``: with ``item_id_type="int"`` a non-negative integer or a string of ASCII digits (at most 19),
  canonicalised to its decimal string (``"0012"`` -> ``"12"``; ``"0"`` is an ordinary item). ``"12a"``,
  ``" 12"``, ``-1``, booleans and floats (even ``12.0``: JSON floats lose precision for large ids and
  ``12.5`` has no meaning) are refused. With ``item_id_type="str"`` any string accepted for ``user_id``
  is accepted as is, integers are canonicalised.
- ``ts``: epoch seconds as a finite JSON number or a decimal string in [0, 1e11) (larger values are
  milliseconds and are refused: send seconds), or an ISO-8601 string (``2024-01-02T03:04:05Z``; no timezone =
  UTC). Booleans, NaN/inf refused.
- ``event_id``: optional non-empty string (<= 256 chars); when absent ``default_event_id`` is used (the
  caller passes ``"topic:partition:offset"``, which is unique per record).
- The Kafka key is advisory: the value's ``user_id`` wins; the key is used only when the value has no
  ``user_id`` (an empty key is then ``empty_key``). A producer whose key differs from ``user_id`` places
  the user's clicks in the partition of the key, and a user's order is only guaranteed within one
  partition; pass ``require_key_match=True`` to dead-letter such records (``key_mismatch``) instead.
- Unknown extra fields are ignored (forward compatibility).

Every refusal raises :class:`DecodeError` with a short machine-readable ``reason`` code (``tombstone``,
``not_bytes``, ``too_large``, ``invalid_json``, ``not_an_object``, ``missing_user_id``, ``bad_user_id``,
``empty_key``, ``bad_key``, ``key_mismatch``, ``missing_item_id``, ``bad_item_id``, ``missing_ts``,
``bad_ts``, ``bad_event_id``; ``undecodable`` only if a library failed unexpectedly) and a human ``detail``;
``str(err)`` is ``"reason: detail"``.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import orjson

from adrec_stream.data.events import (
    MAX_ID_CHARS,
    MAX_TS,
    FieldError,
    Interaction,
    canonical_user_id,
    parse_timestamp,
)
from adrec_stream.data.events import canonical_item_id as _canonical_item_id

__all__ = ["MAX_ID_CHARS", "MAX_TS", "REASONS", "DecodeError", "canonical_item_id", "click_key", "dead_letter_record",
           "decode_click", "encode_click"]

#: Reason codes that :func:`decode_click` can produce.
REASONS = (
    "tombstone",
    "not_bytes",
    "too_large",
    "invalid_json",
    "not_an_object",
    "missing_user_id",
    "bad_user_id",
    "empty_key",
    "bad_key",
    "key_mismatch",
    "missing_item_id",
    "bad_item_id",
    "missing_ts",
    "bad_ts",
    "bad_event_id",
    "undecodable",
)


class DecodeError(FieldError):
    """A Kafka record is not a valid click.

    Attributes:
        reason: short machine-readable code (one of :data:`REASONS`), for metrics and the dead-letter topic.
        detail: human-readable explanation (may quote a prefix of the offending value).
    """


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def canonical_item_id(value: Any, item_id_type: str = "int") -> str:
    """The canonical raw item id of a JSON value, by the click rules (module docstring): every reader of item ids
    from the wire (the click decoder, the fine-tune worker's sequence updates) goes through this; it is
    :func:`adrec_stream.data.events.canonical_item_id` with its refusals as :class:`DecodeError`.

    Args:
        value: the decoded JSON value.
        item_id_type: "int" (a non-negative integer or a string of ASCII digits, returned as its decimal string)
            or "str" (a non-empty string or integer without control characters).

    Raises:
        DecodeError: reason ``bad_item_id`` with the problem (None, a boolean, a float, a list, ...).
    """
    try:
        return _canonical_item_id(value, item_id_type)
    except DecodeError:
        raise
    except FieldError as err:
        raise DecodeError(err.reason, err.detail) from None


def _decode_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise DecodeError("bad_key", f"key is a {type(key).__name__}, expected bytes")
    raw = bytes(key)
    if not raw:
        raise DecodeError("empty_key", "the record key is empty and the value has no user_id")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("bad_key", f"key {_short(raw)} is not UTF-8") from None
    try:
        return canonical_user_id(text)
    except FieldError as err:
        raise DecodeError("bad_key", err.detail) from None


def _decode(
    value: Any,
    key: Any,
    item_id_type: str,
    max_bytes: int,
    default_event_id: str,
    require_key_match: bool,
) -> Interaction:
    if value is None:
        raise DecodeError("tombstone", "null value (tombstone); clicks must carry a JSON object")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise DecodeError("not_bytes", f"value is a {type(value).__name__}, expected bytes")
    if len(value) > max_bytes:
        raise DecodeError("too_large", f"{len(value)} bytes, limit {max_bytes} (max_event_bytes)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        raise DecodeError("invalid_json", str(err)[:120]) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_an_object", f"JSON {type(obj).__name__}, expected an object")

    if "user_id" in obj and obj["user_id"] is not None:
        user = canonical_user_id(obj["user_id"])
        if require_key_match and key is not None:
            try:
                key_user = _decode_key(key)
            except DecodeError as err:
                if err.reason != "empty_key":
                    raise
                key_user = ""
            if key_user != user:
                raise DecodeError("key_mismatch", f"key {_short(key_user)} != user_id {_short(user)}")
    elif key is not None:
        user = _decode_key(key) or ""
        if not user:
            raise DecodeError("empty_key", "the record key is empty and the value has no user_id")
    else:
        raise DecodeError("missing_user_id", "no user_id in the value and no record key")

    if "item_id" not in obj or obj["item_id"] is None:
        raise DecodeError("missing_item_id", "no item_id in the value")
    item = canonical_item_id(obj["item_id"], item_id_type)

    if "ts" not in obj or obj["ts"] is None:
        raise DecodeError("missing_ts", "no ts (epoch seconds or ISO-8601) in the value")
    ts = parse_timestamp(obj["ts"])

    event_id = obj.get("event_id")
    if event_id is None:
        event_id = default_event_id
    elif not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_CHARS:
        raise DecodeError("bad_event_id", f"{_short(event_id)}: expected a non-empty string of <= {MAX_ID_CHARS} chars")
    return Interaction(user, item, ts, event_id)


def decode_click(
    value: bytes | None,
    key: bytes | None = None,
    *,
    item_id_type: Literal["int", "str"] = "int",
    max_bytes: int = 65536,
    default_event_id: str = "",
    require_key_match: bool = False,
) -> Interaction:
    """Decode and validate one Kafka record of the ``clicks`` topic (rules in the module docstring).

    Args:
        value: the record value (JSON object as UTF-8 bytes); None is a tombstone.
        key: the record key (user id as UTF-8) or None. Advisory, see the module docstring.
        item_id_type: "int" (ids must be non-negative decimal integers) or "str".
        max_bytes: values longer than this are refused with ``too_large`` before parsing.
        default_event_id: event id used when the value has none (callers pass ``"topic:partition:offset"``).
        require_key_match: refuse records whose key differs from the value's user_id (``key_mismatch``).

    Returns:
        The canonical :class:`Interaction`.

    Raises:
        DecodeError: for every invalid input, whatever the bytes; nothing else escapes.
        ValueError: (not a DecodeError) only for a caller bug: ``item_id_type`` not "int"/"str".
    """
    if item_id_type not in ("int", "str"):
        raise ValueError(f"item_id_type must be 'int' or 'str', got {item_id_type!r}")
    try:
        return _decode(value, key, item_id_type, max_bytes, default_event_id, require_key_match)
    except DecodeError:
        raise
    except FieldError as err:  # an id or the timestamp refused by the shared rules: the same reason code
        raise DecodeError(err.reason, err.detail) from None
    except Exception as err:  # defensive: the contract is "only DecodeError", whatever a library does
        raise DecodeError("undecodable", f"unexpected {type(err).__name__}: {str(err)[:80]}") from None


def encode_click(ev: Interaction) -> bytes:
    """Serialise a click as the JSON value :func:`decode_click` reads (ids as strings, ts as a number)."""
    return orjson.dumps({"user_id": ev.user_id, "item_id": ev.item_id, "ts": ev.ts, "event_id": ev.event_id})


def click_key(ev: Interaction) -> bytes:
    """The Kafka key for a click: its user id as UTF-8 (so that one user's clicks share a partition)."""
    return ev.user_id.encode("utf-8")


def _text_or_b64(data: bytes | None, limit: int) -> dict[str, Any]:
    if data is None:
        return {"data": None, "encoding": None, "size": 0, "truncated": False}
    raw = bytes(data)
    size = len(raw)
    cut = raw[:limit]
    try:
        return {"data": cut.decode("utf-8"), "encoding": "utf8", "size": size, "truncated": size > limit}
    except UnicodeDecodeError:
        return {
            "data": base64.b64encode(cut).decode("ascii"),
            "encoding": "base64",
            "size": size,
            "truncated": size > limit,
        }


def dead_letter_record(
    reason: str | DecodeError,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    *,
    max_value_bytes: int = 65536,
) -> bytes:
    """JSON value for the dead-letter topic describing a refused record.

    Output fields: ``reason`` (code), ``detail``, ``source`` {topic, partition, offset}, ``key`` and
    ``value`` each as {data, encoding ("utf8" | "base64" | null), size (bytes), truncated}. Values longer
    than ``max_value_bytes`` are cut (so an oversized click cannot make an oversized dead letter); if the
    cut splits a UTF-8 sequence the bytes go out as base64.

    Args:
        reason: a :class:`DecodeError` (code and detail are both recorded) or a reason string
            (``"code: detail"`` strings are split at the first ``": "``).
    """
    if isinstance(reason, DecodeError):
        code, detail = reason.reason, reason.detail
    else:
        code, _, detail = str(reason).partition(": ")
    return orjson.dumps(
        {
            "reason": code,
            "detail": detail,
            "source": {"topic": topic, "partition": int(partition), "offset": int(offset)},
            "key": _text_or_b64(key, 1024),
            "value": _text_or_b64(value, max_value_bytes),
        }
    )
