"""Click decoding/encoding (adrec_stream.stream.events): total decoder, canonical ids, dead letters."""

from __future__ import annotations

import base64
import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrec_stream.data.events import Interaction
from adrec_stream.stream.events import (
    MAX_ID_CHARS,
    REASONS,
    DecodeError,
    click_key,
    dead_letter_record,
    decode_click,
    encode_click,
)


def _dec(obj, key=None, **kw):
    value = obj if isinstance(obj, bytes) or obj is None else orjson.dumps(obj)
    return decode_click(value, key, **kw)


def _reason(obj, key=None, **kw) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        _dec(obj, key, **kw)
    assert info.value.reason in REASONS
    return info.value


# --------------------------------------------------------------------------- valid input


def test_valid_click_canonicalises_ids():
    ev = _dec({"user_id": 42, "item_id": "0012", "ts": 978300760, "event_id": "e-1"})
    assert ev == Interaction("42", "12", 978300760.0, "e-1")
    assert isinstance(ev.ts, float)


def test_item_zero_is_a_normal_item():
    assert _dec({"user_id": "u", "item_id": "0", "ts": 1}).item_id == "0"
    assert _dec({"user_id": "u", "item_id": 0, "ts": 1}).item_id == "0"


def test_default_event_id_used_only_when_absent():
    assert _dec({"user_id": "u", "item_id": 1, "ts": 1}, default_event_id="clicks:3:17").event_id == "clicks:3:17"
    assert _dec({"user_id": "u", "item_id": 1, "ts": 1, "event_id": "x"}, default_event_id="d").event_id == "x"
    assert _dec({"user_id": "u", "item_id": 1, "ts": 1, "event_id": None}, default_event_id="d").event_id == "d"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-01-02T03:04:05Z", 1704164645.0),
        ("2024-01-02T03:04:05", 1704164645.0),  # naive = UTC
        ("2024-01-02T05:04:05+02:00", 1704164645.0),
        ("2024-01-02", 1704153600.0),
        (1704164645.25, 1704164645.25),
        (0, 0.0),
    ],
)
def test_timestamp_forms(ts, expected):
    assert _dec({"user_id": "u", "item_id": 1, "ts": ts}).ts == expected


def test_extra_fields_are_ignored():
    ev = _dec({"user_id": "u", "item_id": 5, "ts": 1, "source": "web", "nested": {"a": [1]}})
    assert ev == Interaction("u", "5", 1.0, "")


def test_str_item_type_accepts_any_id_and_canonicalises_ints():
    assert _dec({"user_id": "u", "item_id": "B00-12a", "ts": 1}, item_id_type="str").item_id == "B00-12a"
    assert _dec({"user_id": "u", "item_id": 7, "ts": 1}, item_id_type="str").item_id == "7"
    # with str ids leading zeros are part of the id
    assert _dec({"user_id": "u", "item_id": "007", "ts": 1}, item_id_type="str").item_id == "007"


def test_key_is_advisory_value_user_wins():
    assert _dec({"user_id": "a", "item_id": 1, "ts": 1}, key=b"b").user_id == "a"
    assert _dec({"item_id": 1, "ts": 1}, key=b"b").user_id == "b"  # key used only when value has none
    assert _reason({"user_id": "a", "item_id": 1, "ts": 1}, key=b"b", require_key_match=True).reason == "key_mismatch"
    assert _dec({"user_id": "a", "item_id": 1, "ts": 1}, key=b"a", require_key_match=True).user_id == "a"


def test_memoryview_and_bytearray_values():
    raw = orjson.dumps({"user_id": "u", "item_id": 3, "ts": 2})
    assert decode_click(bytearray(raw)) == decode_click(memoryview(raw)) == Interaction("u", "3", 2.0, "")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("value", "key", "reason", "detail_part"),
    [
        (None, None, "tombstone", "tombstone"),
        (b"", None, "invalid_json", ""),
        (b"{not json", None, "invalid_json", ""),
        (b"\xff\xfe", None, "invalid_json", ""),
        (b"[1,2]", None, "not_an_object", "list"),
        (b'"text"', None, "not_an_object", "str"),
        (b"null", None, "not_an_object", "NoneType"),
        ({"item_id": 1, "ts": 1}, None, "missing_user_id", ""),
        ({"item_id": 1, "ts": 1}, b"", "empty_key", ""),
        ({"item_id": 1, "ts": 1}, b"\xff", "bad_key", "not UTF-8"),
        ({"user_id": True, "item_id": 1, "ts": 1}, None, "bad_user_id", "boolean"),
        ({"user_id": 1.5, "item_id": 1, "ts": 1}, None, "bad_user_id", "float"),
        ({"user_id": "", "item_id": 1, "ts": 1}, None, "bad_user_id", "empty"),
        ({"user_id": "a\nb", "item_id": 1, "ts": 1}, None, "bad_user_id", "control"),
        ({"user_id": "u" * (MAX_ID_CHARS + 1), "item_id": 1, "ts": 1}, None, "bad_user_id", "257 characters"),
        ({"user_id": [1], "item_id": 1, "ts": 1}, None, "bad_user_id", "list"),
        ({"user_id": "u", "ts": 1}, None, "missing_item_id", ""),
        ({"user_id": "u", "item_id": None, "ts": 1}, None, "missing_item_id", ""),
        ({"user_id": "u", "item_id": "12a", "ts": 1}, None, "bad_item_id", "'12a' is not an integer"),
        ({"user_id": "u", "item_id": " 12", "ts": 1}, None, "bad_item_id", "not an integer"),
        ({"user_id": "u", "item_id": "-3", "ts": 1}, None, "bad_item_id", "not an integer"),
        ({"user_id": "u", "item_id": -3, "ts": 1}, None, "bad_item_id", "negative"),
        ({"user_id": "u", "item_id": 12.0, "ts": 1}, None, "bad_item_id", "float"),
        ({"user_id": "u", "item_id": False, "ts": 1}, None, "bad_item_id", "boolean"),
        ({"user_id": "u", "item_id": "\u0663", "ts": 1}, None, "bad_item_id", "not an integer"),  # Arabic-Indic 3
        ({"user_id": "u", "item_id": 10**19, "ts": 1}, None, "bad_item_id", "19 digits"),
        ({"user_id": "u", "item_id": 1}, None, "missing_ts", ""),
        ({"user_id": "u", "item_id": 1, "ts": "yesterday"}, None, "bad_ts", "'yesterday'"),
        ({"user_id": "u", "item_id": 1, "ts": True}, None, "bad_ts", "boolean"),
        ({"user_id": "u", "item_id": 1, "ts": -1}, None, "bad_ts", ""),
        ({"user_id": "u", "item_id": 1, "ts": 1.7e12}, None, "bad_ts", "milliseconds"),
        ({"user_id": "u", "item_id": 1, "ts": 1700000000000}, None, "bad_ts", "milliseconds"),
        ({"user_id": "u", "item_id": 1, "ts": {"s": 1}}, None, "bad_ts", "dict"),
        (b'{"user_id":"u","item_id":1,"ts":1e400}', None, "invalid_json", ""),  # orjson refuses inf literals
        ({"user_id": "u", "item_id": 1, "ts": 1, "event_id": 5}, None, "bad_event_id", ""),
        ({"user_id": "u", "item_id": 1, "ts": 1, "event_id": ""}, None, "bad_event_id", ""),
    ],
)
def test_refusals_have_specific_reasons(value, key, reason, detail_part):
    err = _reason(value, key)
    assert err.reason == reason
    assert detail_part in err.detail
    assert str(err).startswith(reason)


def test_nan_and_infinity_tokens_refused():
    for raw in (b'{"user_id":"u","item_id":1,"ts":NaN}', b'{"user_id":"u","item_id":1,"ts":Infinity}'):
        assert _reason(raw).reason == "invalid_json"


def test_too_large_checked_before_parsing():
    big = orjson.dumps({"user_id": "u", "item_id": 1, "ts": 1, "pad": "x" * 200})
    assert _reason(big, max_bytes=100).reason == "too_large"
    assert _dec(big, max_bytes=len(big)).item_id == "1"


def test_non_bytes_value_refused():
    assert _reason_of(lambda: decode_click("{}")) == "not_bytes"  # type: ignore[arg-type]
    assert _reason_of(lambda: decode_click(b'{"item_id":1,"ts":1}', "key")) == "bad_key"  # type: ignore[arg-type]


def _reason_of(fn) -> str:
    with pytest.raises(DecodeError) as info:
        fn()
    return info.value.reason


def test_deeply_nested_json_is_a_decode_error():
    raw = b"[" * 5000 + b"]" * 5000
    assert _reason(raw).reason == "invalid_json"


# --------------------------------------------------------------------------- properties

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
_field_values = _json_scalars | st.sampled_from(["12", "0", "2024-01-01T00:00:00Z", "12a", "", "1e3"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.none() | st.binary(max_size=300), key=st.none() | st.binary(max_size=20),
       item_type=st.sampled_from(["int", "str"]))
def test_arbitrary_bytes_only_raise_decode_error(value, key, item_type):
    try:
        ev = decode_click(value, key, item_id_type=item_type, max_bytes=200)
    except DecodeError as err:
        assert err.reason in REASONS
    else:
        assert isinstance(ev, Interaction) and ev.user_id and ev.item_id


@settings(max_examples=400, deadline=None)
@given(
    obj=st.fixed_dictionaries(
        {},
        optional={"user_id": _field_values, "item_id": _field_values, "ts": _field_values, "event_id": _field_values,
                  "extra": _json},
    ),
    key=st.none() | st.binary(max_size=8),
    item_type=st.sampled_from(["int", "str"]),
)
def test_arbitrary_json_objects_only_raise_decode_error(obj, key, item_type):
    try:
        ev = decode_click(json.dumps(obj).encode(), key, item_id_type=item_type)  # json: big ints too
    except DecodeError as err:
        assert err.reason in REASONS
    else:
        assert isinstance(ev.ts, float) and math.isfinite(ev.ts) and 0 <= ev.ts < 1e11
        if item_type == "int":
            assert ev.item_id == str(int(ev.item_id))


_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"), min_size=1, max_size=40
).filter(lambda s: not any(ord(c) < 32 for c in s))


@settings(max_examples=300, deadline=None)
@given(
    user=_ids,
    item=st.integers(min_value=0, max_value=10**19 - 1),
    ts=st.floats(min_value=0, max_value=1e11, exclude_max=True, allow_nan=False),
    event_id=_ids,
)
def test_valid_int_events_round_trip(user, item, ts, event_id):
    ev = Interaction(user, str(item), ts, event_id)
    assert decode_click(encode_click(ev), click_key(ev)) == ev


@settings(max_examples=200, deadline=None)
@given(user=_ids, item=_ids, ts=st.integers(min_value=0, max_value=10**11 - 1), event_id=_ids)
def test_valid_str_events_round_trip(user, item, ts, event_id):
    ev = Interaction(user, item, float(ts), event_id)
    assert decode_click(encode_click(ev), click_key(ev), item_id_type="str") == ev


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_record_text_and_base64():
    err = _reason({"user_id": "u", "item_id": "12a", "ts": 1})
    rec = orjson.loads(dead_letter_record(err, "clicks", 2, 41, b"u", b'{"item_id":"12a"}'))
    assert rec["reason"] == "bad_item_id"
    assert rec["detail"] == "'12a' is not an integer"
    assert rec["source"] == {"topic": "clicks", "partition": 2, "offset": 41}
    assert rec["key"] == {"data": "u", "encoding": "utf8", "size": 1, "truncated": False}
    assert rec["value"]["data"] == '{"item_id":"12a"}'

    rec = orjson.loads(dead_letter_record("invalid_json: bad", "clicks", 0, 7, None, b"\xff\x00\x01"))
    assert (rec["reason"], rec["detail"]) == ("invalid_json", "bad")
    assert rec["key"]["data"] is None and rec["key"]["encoding"] is None
    assert rec["value"]["encoding"] == "base64"
    assert base64.b64decode(rec["value"]["data"]) == b"\xff\x00\x01"


def test_dead_letter_truncates_oversized_values():
    value = b"a" * 1000
    rec = orjson.loads(dead_letter_record("too_large", "clicks", 0, 1, b"k", value, max_value_bytes=100))
    assert rec["reason"] == "too_large" and rec["detail"] == ""
    assert rec["value"] == {"data": "a" * 100, "encoding": "utf8", "size": 1000, "truncated": True}


def test_dead_letter_tombstone():
    rec = orjson.loads(dead_letter_record(_reason(None), "clicks", 1, 2, b"u", None))
    assert rec["reason"] == "tombstone"
    assert rec["value"] == {"data": None, "encoding": None, "size": 0, "truncated": False}


def test_key_edge_cases():
    value = {"user_id": "a", "item_id": 1, "ts": 1}
    assert _reason(value, key=b"", require_key_match=True).reason == "key_mismatch"
    assert _reason(value, key=b"\xff", require_key_match=True).reason == "bad_key"
    assert _reason_of(lambda: decode_click(orjson.dumps(value), 5, require_key_match=True)) == "bad_key"  # type: ignore[arg-type]
    assert _reason({"item_id": 1, "ts": 1}, key=b"a\x00b").reason == "bad_key"  # control char in the key
    assert _dec(value, key=5).user_id == "a"  # advisory key: not even looked at without require_key_match


def test_huge_integer_ids_are_refused():
    # orjson reads integers beyond 64 bits as floats: refused like any float id
    assert _reason(b'{"user_id":99999999999999999999999,"item_id":1,"ts":1}').reason == "bad_user_id"
    assert _reason(b'{"user_id":"u","item_id":18446744073709551615,"ts":1}').reason == "bad_item_id"
    # ... and the detail says so, instead of "is a float; send an integer" to a producer that sent one
    user = _reason(b'{"user_id":99999999999999999999999,"item_id":1,"ts":1}').detail
    item = _reason(b'{"user_id":"u","item_id":12345678901234567890123,"ts":1}').detail
    assert "beyond 64 bits" in user and "JSON string" in user
    assert "beyond 64 bits" in item and "19" in item
    assert "is a float" in _reason(b'{"user_id":"u","item_id":12.5,"ts":1}').detail


def test_bad_item_id_type_is_a_caller_error():
    with pytest.raises(ValueError, match="item_id_type") as info:
        decode_click(b"{}", item_id_type="float")  # type: ignore[arg-type]
    assert not isinstance(info.value, DecodeError)
