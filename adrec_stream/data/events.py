"""Timestamped interaction logs in their original formats, and the one rule for ids and timestamps.

Supported formats (``fmt``):

- ``"ml100k"``: MovieLens 100K ``u.data``: ``user \\t item \\t rating \\t unix_ts``, no header.
- ``"mlcsv"``: MovieLens ``ratings.csv`` (ml-latest-small, ml-25m...): header ``userId,movieId,rating,timestamp``.
- ``"ml1m"``: MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::unix_ts``, no header.
- ``"gowalla"``: SNAP Gowalla check-ins: ``user \t ISO-8601 time \t lat \t lon \t location_id``; the
  location is the item, there is no rating.
- ``"csv"``: generic ``user,item,ts`` with an optional 4th column read as the rating, without a header; or with a
  header line whose names say which column is which, in any order (:data:`COLUMN_NAMES`, case, ``_``, ``-`` and
  spaces ignored: ``UserID,MovieID,Rating,Timestamp`` works; other named columns are ignored).
- ``"auto"``: by content of the first line (``::`` -> ml1m, five tab-separated fields -> gowalla, other tabs ->
  ml100k, the ml header -> mlcsv, else csv).

Files are UTF-8; a byte-order mark is ignored (UTF-16/32 with a mark are read too: :mod:`adrec_stream.textio`).
A header line that the format does not know (or a header in a format that has none) is an error naming the
header seen and the ones expected, never read as an interaction.

Ids and timestamps (one rule for every loader here, the replay producer and the click decoder
:func:`adrec_stream.stream.events.decode_click`, so that a row is either accepted everywhere with the same
``(user, item, ts)`` or refused everywhere with the same reason; :class:`FieldError` carries the reason code):

- user id (:func:`canonical_user_id`): non-empty text of at most 256 characters without control characters,
  kept as written (a file's field is stripped of surrounding spaces first); an integer is its decimal string.
  Refused: ``bad_user_id``.
- item id (:func:`canonical_item_id`): with ``item_id_type="str"`` the user-id rule; with ``"int"`` (the stream's
  default) a non-negative integer of at most 19 digits, canonicalised to its decimal string (``"0012"`` ->
  ``"12"``; ``"0"`` is an ordinary item). The canonical string is the vocabulary key
  (:func:`build_vocabulary`, :class:`adrec_stream.state.vocab.Vocabulary`). Refused: ``bad_item_id``.
- timestamp (:func:`parse_timestamp`, the project's one ISO-8601 parser): epoch SECONDS as a decimal number, or
  an ISO-8601 date/time (no timezone = UTC), giving a float in [0, 1e11). Larger numbers are refused, not
  guessed: 1e11 s is the year 5138, such values are milliseconds (``1260759144000``); convert the column to
  seconds, or read the file with :func:`read_delimited` ``ts_unit="ms"`` (``evaluate-replay --columns ...
  --ts-unit ms``), which divides by 1000 before the rule applies. Refused: ``bad_ts``.

The loaders default to ``item_id_type="str"`` (ids as the file writes them); pass the stream config's
``item_id_type`` when the rows go to the stream (``adrec-stream replay`` and the demo do).

Result order is deterministic: stably sorted by timestamp, ties kept in file order.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from adrec_stream.errors import DataFileError
from adrec_stream.textio import read_text

Format = Literal["auto", "ml100k", "mlcsv", "ml1m", "gowalla", "csv"]
ItemIdType = Literal["int", "str"]

FORMAT_DESCRIPTIONS: dict[str, str] = {
    "ml100k": "MovieLens 100K u.data: user<TAB>item<TAB>rating<TAB>unix_ts per line, no header",
    "mlcsv": "MovieLens ratings.csv: header userId,movieId,rating,timestamp then one rating per line",
    "ml1m": "MovieLens 1M ratings.dat: user::item::rating::unix_ts per line, no header",
    "gowalla": "Gowalla check-ins: user<TAB>ISO-8601 time<TAB>lat<TAB>lon<TAB>location_id per line, no header",
    "csv": "CSV user,item,ts[,rating] (ts = epoch seconds or ISO-8601), or a header line naming those columns",
    "auto": "one of: MovieLens u.data (tab), ratings.csv (header), ratings.dat (::), or CSV user,item,ts",
}
_ML_CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]

#: header names of a generic CSV's columns (compared without case, ``_``, ``-``, ``.`` and spaces)
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "customerid", "visitorid", "session", "sessionid"),
    "item": ("item", "itemid", "movieid", "productid", "locationid", "venueid", "trackid", "songid", "poiid"),
    "ts": ("ts", "timestamp", "time", "datetime", "date", "eventtime", "eventdate", "unixtime", "checkintime"),
    "rating": ("rating", "score", "stars"),
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]*")

#: longest user / item id (characters)
MAX_ID_CHARS = 256
#: Epoch seconds at or above this are refused (year ~5138; values this large are usually milliseconds).
MAX_TS = 1e11
#: longest ISO-8601 text read
MAX_TS_CHARS = 64

_INT_ID = re.compile(r"[0-9]{1,19}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class Interaction(NamedTuple):
    """One interaction (a click): the record shared by the file loaders, the wire format and the stores.

    Fields: ``user_id`` and ``item_id`` are canonical raw ids (strings by :func:`canonical_user_id` /
    :func:`canonical_item_id`), ``ts`` epoch seconds (:func:`parse_timestamp`), ``event_id`` a unique id ("" when
    the source has none: the file loaders leave it empty, the replay producer sets ``"<source>:<row>"``, the click
    decoder ``"topic:partition:offset"`` when the record carries none), ``rating`` the explicit rating when the
    file has one (never on the wire).
    """

    user_id: str
    item_id: str
    ts: float
    event_id: str = ""
    rating: float | None = None


class FieldError(ValueError):
    """A user id, item id or timestamp refused by the shared rules (module docstring).

    Attributes:
        reason: ``bad_user_id``, ``bad_item_id`` or ``bad_ts`` (the click decoder's dead-letter reasons).
        detail: what is wrong with the value (quoting a prefix of it).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _beyond_64_bits(value: Any) -> bool:
    """A float that is an integer beyond 64 bits: what JSON parsers (orjson) make of such an integer literal."""
    return isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) >= 2**63


def _plain_id(value: Any, reason: str) -> str:
    if isinstance(value, bool):
        raise FieldError(reason, f"{value!r} is a boolean, expected a string or integer")
    if isinstance(value, int):
        return str(value)
    if _beyond_64_bits(value):
        raise FieldError(reason, f"{_short(value)}: an integer beyond 64 bits is read as a float and refused; "
                                 "send such an id as a JSON string")
    if not isinstance(value, str):
        raise FieldError(reason, f"{_short(value)} is a {type(value).__name__}, expected a string or integer")
    if not value:
        raise FieldError(reason, "empty string")
    if len(value) > MAX_ID_CHARS:
        raise FieldError(reason, f"{len(value)} characters, at most {MAX_ID_CHARS} allowed")
    if _CONTROL.search(value):
        raise FieldError(reason, f"{_short(value)} contains control characters")
    return value


def canonical_user_id(value: Any) -> str:
    """The canonical user id of a value (module docstring): a non-empty string of at most 256 characters without
    control characters, as is; an integer as its decimal string.

    Raises:
        FieldError: reason ``bad_user_id`` (a boolean, float, list, empty or too long string, control characters).
    """
    return _plain_id(value, "bad_user_id")


def canonical_item_id(value: Any, item_id_type: str = "int") -> str:
    """The canonical raw item id (the vocabulary key) of a value (module docstring).

    Args:
        value: a JSON value or a file's (stripped) field text.
        item_id_type: "int" (a non-negative integer or a string of at most 19 ASCII digits, returned as its
            decimal string: ``"0012"`` -> ``"12"``) or "str" (the user-id rule).

    Raises:
        FieldError: reason ``bad_item_id`` with the problem (None, a boolean, a float, ``"12a"``, ``-3``, ...).
        ValueError: (not a FieldError) ``item_id_type`` is not "int" or "str" (a caller bug).
    """
    if item_id_type not in ("int", "str"):
        raise ValueError(f"item_id_type must be 'int' or 'str', got {item_id_type!r}")
    if value is None:
        raise FieldError("bad_item_id", "null, expected an item id")
    if item_id_type == "str":
        return _plain_id(value, "bad_item_id")
    if isinstance(value, bool):
        raise FieldError("bad_item_id", f"{value!r} is a boolean, expected an integer")
    if isinstance(value, int):
        if value < 0:
            raise FieldError("bad_item_id", f"{value} is negative")
        if value >= 10**19:
            raise FieldError("bad_item_id", f"{_short(value)} has more than 19 digits")
        return str(value)
    if _beyond_64_bits(value):
        raise FieldError("bad_item_id", f"{_short(value)}: an integer beyond 64 bits (item ids have at most 19 "
                                        "digits with item_id_type int)")
    if isinstance(value, float):
        raise FieldError("bad_item_id", f"{_short(value)} is a float; send an integer or a string of digits")
    if not isinstance(value, str):
        raise FieldError("bad_item_id", f"{_short(value)} is a {type(value).__name__}, expected an integer")
    if not _INT_ID.fullmatch(value):
        raise FieldError("bad_item_id", f"{_short(value)} is not an integer")
    return str(int(value))


def parse_timestamp(value: Any, unit: Literal["auto", "s", "ms"] = "auto") -> float:
    """Epoch seconds of a timestamp by the shared rule (module docstring); the project's one ISO-8601 parser.

    Args:
        value: a JSON number, or text (a file's field, a JSON string): a decimal number (``"964982703"``,
            ``"1.5e9"``) or, with ``unit="auto"``, an ISO-8601 date/time (``2024-01-02T03:04:05Z``; no timezone =
            UTC).
        unit: ``"auto"`` (numbers are epoch seconds; text may also be ISO-8601), ``"s"`` (numbers only, epoch
            seconds) or ``"ms"`` (numbers only, epoch milliseconds: divided by 1000, then the seconds rule).

    Returns:
        Epoch seconds, a float in [0, 1e11).

    Raises:
        FieldError: reason ``bad_ts``: a boolean or other type, text that is neither a number nor (``auto``)
            ISO-8601, NaN/infinity, before 1970, or >= 1e11 seconds (milliseconds given as seconds).
    """
    if isinstance(value, bool):
        raise FieldError("bad_ts", f"{value!r} is a boolean, expected epoch seconds or ISO-8601")
    if isinstance(value, str):
        text = value.strip()
        if _DECIMAL.fullmatch(text):
            number: float = float(text)
        elif unit != "auto":
            raise FieldError("bad_ts", f"{_short(value)} is not a decimal number (epoch "
                                       f"{'milliseconds' if unit == 'ms' else 'seconds'})")
        elif len(text) > MAX_TS_CHARS:
            raise FieldError("bad_ts", f"{_short(value)} is too long for a timestamp")
        else:
            return _iso_seconds(value, text)
    elif isinstance(value, int):
        if not -(10**300) < value < 10**300:  # beyond any float: refused by the range check below all the same
            return _seconds_in_range(-1.0 if value < 0 else math.inf, value)
        number = float(value)
    elif isinstance(value, float):
        number = value
    else:
        raise FieldError("bad_ts", f"{_short(value)} is a {type(value).__name__}, expected a number or string")
    if not math.isfinite(number):
        raise FieldError("bad_ts", f"{_short(value)} is not finite")
    if unit == "ms":
        number /= 1000.0
    return _seconds_in_range(number, value)


def _seconds_in_range(ts: float, shown: Any) -> float:
    if ts < 0:
        raise FieldError("bad_ts", f"{_short(shown)} is before 1970-01-01")
    if ts >= MAX_TS:
        raise FieldError("bad_ts", f"{_short(shown)} is too large for epoch seconds (>= 1e11, the year 5138): "
                                   "milliseconds? send or convert to seconds")
    return ts


def _iso_seconds(value: str, text: str) -> float:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError("bad_ts", f"{_short(value)} is neither epoch seconds nor ISO-8601 "
                                   "(e.g. 2024-01-02T03:04:05Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        ts = dt.timestamp()
    except (OverflowError, OSError, ValueError):
        raise FieldError("bad_ts", f"{_short(value)} is out of range") from None
    return _seconds_in_range(ts, value)


def canonical_interaction(x: Interaction, item_id_type: str = "str") -> Interaction:
    """``x`` with its user id, item id and timestamp by the shared rules (module docstring); event id and rating
    kept. An interaction read by a loader with the same ``item_id_type`` comes back equal.

    Raises:
        FieldError: an id or the timestamp refused (reason ``bad_user_id`` / ``bad_item_id`` / ``bad_ts``).
    """
    return x._replace(user_id=canonical_user_id(x.user_id), item_id=canonical_item_id(x.item_id, item_id_type),
                      ts=parse_timestamp(x.ts))


def _detect(first_line: str) -> str:
    if "::" in first_line:
        return "ml1m"
    if "\t" in first_line:
        return "gowalla" if len(first_line.split("\t")) == 5 else "ml100k"
    if [c.strip() for c in first_line.split(",")] == _ML_CSV_HEADER:
        return "mlcsv"
    return "csv"


def _interaction(user: str, item: str, ts: str, rating: str | None, item_id_type: str) -> Interaction:
    """One row by the shared rules (fields stripped first).

    Raises:
        FieldError: an id or the timestamp refused. ValueError: a rating that is not a finite number.
    """
    uid = canonical_user_id(user.strip())
    iid = canonical_item_id(item.strip(), item_id_type)
    t = parse_timestamp(ts)
    value: float | None = None
    if rating is not None and rating.strip():
        value = float(rating)
        if not math.isfinite(value):
            raise ValueError(f"rating {rating!r} is not finite")
    return Interaction(uid, iid, t, rating=value)


def _row(path: Path, lineno: int, fields: list[str], fmt: str, item_id_type: str,
         cols: dict[str, int] | None = None) -> Interaction:
    """One row of a ``read_interactions`` format (``cols``: a generic CSV's columns named by its header).

    Raises:
        DataFileError: wrong field count, or a refused field (naming the line and the reason).
    """
    what = f"format {fmt!r} is {FORMAT_DESCRIPTIONS[fmt]}"
    if cols is not None:
        need = max(cols.values()) + 1
        if len(fields) < need:
            raise DataFileError(f"{path}:{lineno}: expected at least {need} fields (the header's columns "
                                f"{', '.join(f'{k}={v + 1}' for k, v in cols.items())}), got {len(fields)} "
                                f"({fields[:6]!r})")
        rating_col = cols.get("rating")
        if rating_col is None and cols == {"user": 0, "item": 1, "ts": 2} and len(fields) == 4:
            rating_col = 3  # the generic layout's optional 4th column, under a header naming the first three
        parts = (fields[cols["user"]], fields[cols["item"]], fields[cols["ts"]],
                 fields[rating_col] if rating_col is not None else None)
    else:
        want = {"gowalla": (5,), "csv": (3, 4)}.get(fmt, (4,))
        if len(fields) not in want:
            raise DataFileError(f"{path}:{lineno}: expected {' or '.join(map(str, want))} fields, got {len(fields)} "
                                f"({fields[:6]!r}); {what}")
        if fmt == "gowalla":
            parts = (fields[0], fields[4], fields[1], None)
        elif fmt == "csv":
            parts = (fields[0], fields[1], fields[2], fields[3] if len(fields) == 4 else None)
        else:
            parts = (fields[0], fields[1], fields[3], fields[2])
    try:
        return _interaction(*parts, item_id_type)
    except FieldError as err:
        raise DataFileError(f"{path}:{lineno}: {err}{_hint(err, item_id_type)}; {what}") from None
    except ValueError as err:
        raise DataFileError(f"{path}:{lineno}: bad rating {parts[3]!r} ({err}); a finite number") from None


def _hint(err: FieldError, item_id_type: str) -> str:
    """What a loader adds to a refusal of the shared rules: how to read such a file."""
    if err.reason == "bad_item_id" and item_id_type == "int":
        return " (item_id_type int reads decimal ids only, as the stream's default; ids with other characters need " \
               "item_id_type str, in the stream config: item_id_type: str)"
    if err.reason == "bad_ts" and "milliseconds?" in err.detail:
        return " (a millisecond column: convert it to seconds, or read the file through a column mapping with the " \
               "unit given: evaluate-replay --columns user=..,item=..,ts=.. --ts-unit ms)"
    return ""


def _name_key(name: str) -> str:
    return re.sub(r"[\s_.-]", "", name).lower()


def _expected_columns() -> str:
    return "; ".join(f"{role}: {', '.join(names)}" for role, names in COLUMN_NAMES.items())


def _header_columns(path: Path, lineno: int, fields: list[str]) -> dict[str, int] | None:
    """The columns a generic CSV's first row names, or None when the row is not made of names (then it is data).

    Raises:
        DataFileError: a row of names that does not name a user, an item and a timestamp column (or names one
            twice): the header seen and the names expected.
    """
    seen = [f.strip() for f in fields]
    if not seen or not all(_NAME.fullmatch(f) for f in seen):
        return None
    cols: dict[str, int] = {}
    for i, name in enumerate(seen):
        for role, names in COLUMN_NAMES.items():
            if _name_key(name) in names:
                if role in cols:
                    raise DataFileError(f"{path}:{lineno}: the header {seen!r} names the {role} column twice "
                                        f"({seen[cols[role]]!r} and {name!r}); keep one")
                cols[role] = i
    missing = [r for r in ("user", "item", "ts") if r not in cols]
    if missing:
        raise DataFileError(f"{path}:{lineno}: header {seen!r} not recognised: no {' / '.join(missing)} column. "
                            f"Expected a header naming the columns ({_expected_columns()}; case, _ and spaces "
                            "ignored), or no header and the columns user,item,ts[,rating]")
    return cols


def _not_an_interaction(path: Path, lineno: int, fields: list[str], kind: str, err: DataFileError) -> DataFileError:
    """The error of a first line that is neither an interaction nor a header the format knows."""
    seen = [f.strip() for f in fields]
    cause = str(err).removeprefix(f"{path}:{lineno}: ").split("; format ")[0]
    if kind == "csv":
        expected = (f"a header naming the columns ({_expected_columns()}; case, _ and spaces ignored), or no "
                    "header and the columns user,item,ts[,rating]")
    elif kind == "mlcsv":
        expected = f"the header {','.join(_ML_CSV_HEADER)}"
    else:
        expected = f"no header line ({FORMAT_DESCRIPTIONS[kind]}); for a file with a header use format 'csv'"
    return DataFileError(f"{path}:{lineno}: the first line {seen!r} is neither an interaction ({cause}) nor a "
                         f"header format {kind!r} knows: expected {expected}")


#: file-name patterns looked for when a folder is given to :func:`read_interactions`
KNOWN_FILE_NAMES = ("u.data", "ratings.csv", "ratings.dat", "*rating*.dat", "Gowalla_totalCheckins*.txt")


def _file_in_folder(folder: Path) -> Path:
    """The one interaction file of a known name in ``folder``.

    Raises:
        DataFileError: none or several known files there (naming what the folder holds).
    """
    found = sorted({f for pattern in KNOWN_FILE_NAMES for f in folder.glob(pattern) if f.is_file()})
    if len(found) == 1:
        return found[0]
    held = sorted(x.name for x in folder.iterdir())[:12]
    what = "none of" if not found else "more than one of"
    raise DataFileError(f"{folder} is a folder holding {what} {', '.join(KNOWN_FILE_NAMES)} (it holds: "
                        f"{', '.join(held) or 'nothing'}); pass the interaction file itself")


def _read_text(p: Path, expected: str) -> str:
    """The text of an interaction file (UTF-8; a byte-order mark, as spreadsheet exports write it, is dropped, and
    UTF-16/32 with a mark are decoded: :func:`adrec_stream.textio.read_text`).

    Raises:
        DataFileError: missing, unreadable or not UTF-8; the message names the path and ``expected`` (the format).
    """
    if not p.is_file():
        raise DataFileError(f"interaction file not found: {p} (expected {expected})")
    try:
        return read_text(p)
    except UnicodeDecodeError as err:
        enc = err.encoding.upper().removesuffix("-SIG")
        raise DataFileError(f"{p}: not {enc} text at byte {err.start} (expected {expected}); save it as UTF-8") from None
    except OSError as err:
        raise DataFileError(f"cannot read {p}: {err.strerror}") from None


def read_interactions(path: str | Path, fmt: Format = "auto", *, item_id_type: ItemIdType = "str") -> list[Interaction]:
    """Read an interaction log, sorted stably by (timestamp, file order).

    Args:
        path: the file (e.g. ``../shared/data/events/ml-100k/u.data``), or a folder holding exactly one of the
            known file names (:data:`KNOWN_FILE_NAMES`), which is then read.
        fmt: ``"auto"``, ``"ml100k"``, ``"mlcsv"``, ``"ml1m"``, ``"gowalla"`` or ``"csv"`` (module docstring).
        item_id_type: the item-id rule (module docstring): "str" keeps the file's ids, "int" canonicalises
            decimal ids as the stream's default does; pass the stream config's value for rows bound to the stream.

    Returns:
        All rows as :class:`Interaction` (ids and ts by the shared rules), oldest first.

    Raises:
        DataFileError: the file is missing/unreadable/not UTF-8 (naming the path and expected format), a row is
            malformed or has a refused id or timestamp (naming the line number and the reason code: ``bad_user_id``,
            ``bad_item_id``, ``bad_ts``), a header line the format does not know (naming the header seen and
            the ones expected), or the file holds no rows.
    """
    p = Path(path)
    if fmt not in FORMAT_DESCRIPTIONS:
        raise DataFileError(f"unknown interaction format {fmt!r}; use one of {sorted(FORMAT_DESCRIPTIONS)}")
    if p.is_dir():
        p = _file_in_folder(p)
    text = _read_text(p, FORMAT_DESCRIPTIONS[fmt])
    lines = [ln.rstrip("\r") for ln in text.split("\n")]  # physical lines: exact line numbers in errors
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise DataFileError(f"{p}: no interactions (empty file; expected {FORMAT_DESCRIPTIONS[fmt]})")
    kind = _detect(first) if fmt == "auto" else fmt

    def numbered_fields() -> Iterable[tuple[int, list[str]]]:
        if kind in ("ml100k", "ml1m", "gowalla"):
            sep = "::" if kind == "ml1m" else "\t"
            for lineno, line in enumerate(lines, 1):
                if line.strip():
                    yield lineno, line.split(sep)
        else:
            reader = csv.reader(io.StringIO(text))
            try:
                for fields in reader:
                    if fields and any(f.strip() for f in fields):
                        yield reader.line_num, fields
            except csv.Error as err:
                raise DataFileError(f"{p}:{reader.line_num}: not readable as CSV ({err})") from None

    rows: list[Interaction] = []
    cols: dict[str, int] | None = None
    first_row = True
    for lineno, fields in numbered_fields():
        is_first, first_row = first_row, False
        if is_first and kind == "mlcsv":
            if [f.strip() for f in fields] != _ML_CSV_HEADER:
                raise DataFileError(f"{p}:{lineno}: expected the header {','.join(_ML_CSV_HEADER)}, got "
                                    f"{[f.strip() for f in fields]!r}")
            continue
        if is_first and kind == "csv":
            cols = _header_columns(p, lineno, fields)
            if cols is not None:
                continue
        try:
            rows.append(_row(p, lineno, fields, kind, item_id_type, cols))
        except DataFileError as err:
            if is_first and not any(_DECIMAL.fullmatch(f.strip()) for f in fields):  # no number: a header?
                raise _not_an_interaction(p, lineno, fields, kind, err) from None
            raise
    if not rows:
        raise DataFileError(f"{p}: no interactions (only a header?); expected {FORMAT_DESCRIPTIONS[kind]}")
    rows.sort(key=lambda r: r.ts)  # stable: ties keep file order
    return rows


def chronological_split(
    interactions: Sequence[Interaction], train_fraction: float = 0.8
) -> tuple[list[Interaction], list[Interaction]]:
    """Split a log by time: the first ``round(train_fraction * n)`` events (in time order) and the rest.

    Input that is not sorted by ``ts`` is stably sorted first. Events sharing the boundary timestamp are
    split by file order (the cut is by event count, as in "first 80% of events").

    Raises:
        ValueError: ``train_fraction`` outside [0, 1].
    """
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    seq = list(interactions)
    if any(seq[i].ts > seq[i + 1].ts for i in range(len(seq) - 1)):
        seq.sort(key=lambda r: r.ts)
    cut = round(train_fraction * len(seq))
    return seq[:cut], seq[cut:]


def build_vocabulary(interactions: Iterable[Interaction], min_count: int = 1) -> list[str]:
    """Raw item ids in order of first appearance, keeping those seen at least ``min_count`` times.

    The result is a checkpoint vocabulary: ``vocab[i]`` is the raw id of internal item index ``i + 1``
    (index 0 is padding). First-appearance order means a later, larger log extends the vocabulary at the
    end, so earlier indices keep their meaning.
    """
    counts: dict[str, int] = {}
    for it in interactions:
        counts[it.item_id] = counts.get(it.item_id, 0) + 1
    return [item for item, c in counts.items() if c >= min_count]


def user_sequences(interactions: Iterable[Interaction], vocab: Sequence[str]) -> dict[str, list[int]]:
    """Per-user internal item index sequences (1-based, in the given order); unknown items are dropped.

    Returns:
        ``{raw_user_id: [index, ...]}`` in order of each user's first interaction.
    """
    index = {raw: i + 1 for i, raw in enumerate(vocab)}
    out: dict[str, list[int]] = {}
    for it in interactions:
        idx = index.get(it.item_id)
        if idx is not None:
            out.setdefault(it.user_id, []).append(idx)
    return out


def item_counts(interactions: Iterable[Interaction], vocab: Sequence[str]) -> list[int]:
    """Interaction count per internal index (length ``len(vocab) + 1``, entry 0 = padding = 0).

    The format expected in checkpoint ``meta["item_counts"]`` for the recommender's popularity fallback.
    """
    index = {raw: i + 1 for i, raw in enumerate(vocab)}
    counts = [0] * (len(vocab) + 1)
    for it in interactions:
        idx = index.get(it.item_id)
        if idx is not None:
            counts[idx] += 1
    return counts


def read_delimited(path: str | Path, *, user: str | int, item: str | int, ts: str | int, sep: str = ",",
                   header: bool = True, ts_unit: Literal["s", "ms", "iso"] = "s",
                   order: str | int | None = None, item_id_type: ItemIdType = "str") -> list[Interaction]:
    """Read any delimited interaction log through a column mapping (``adrec-stream evaluate-replay --columns``).

    A user's own log needs a mapping, not code: e.g. DIGINETICA's ``train-item-views.csv``
    (``session_id;user_id;item_id;timeframe;eventdate``) with ``user="session_id"`` (a session id is a user
    id here), ``item="item_id"``, ``ts="eventdate"``, ``order="timeframe"``, ``sep=";"``, ``ts_unit="iso"``; or
    SNAP Gowalla (``user \\t ISO time \\t lat \\t lon \\t location``, no header) with ``user=0, item=4, ts=1,
    sep="\\t", header=False, ts_unit="iso"``.

    Args:
        path: the file (UTF-8; a leading byte-order mark is ignored, UTF-16/32 with a mark are read).
        user, item, ts: the columns: a header name (str, needs ``header=True``) or a 0-based index (int).
        sep: the field separator; one character is read with :mod:`csv` (quoted fields allowed), a longer one
            (e.g. ``"::"``) splits each line on it.
        header: the first non-empty line names the columns (it is not an interaction).
        ts_unit: ``"s"`` epoch seconds, ``"ms"`` epoch milliseconds (divided by 1000), ``"iso"`` ISO-8601 or
            epoch seconds; all through :func:`parse_timestamp` (the shared rule: result in [0, 1e11) seconds).
        order: optional numeric column that orders events with equal ``ts`` (e.g. DIGINETICA's ``timeframe``,
            milliseconds since the session started, under a day-resolution ``eventdate``); None = file order.
        item_id_type: the item-id rule (module docstring; "str" keeps the file's ids).

    Returns:
        :class:`Interaction` rows (rating None), sorted stably by (ts, ``order``, file order), like
        :func:`read_interactions`.

    Raises:
        DataFileError: the file is missing (naming the path and the expected layout), unreadable or not UTF-8;
            a header that lacks a named column (naming the header seen and the columns asked for); a name given
            without a header; a row with too few fields, an id or timestamp the shared rules refuse (naming the
            file, line, value and reason code) or a bad order value; a first line that looks like a header with
            ``header=False``; no rows.
    """
    units = {"s": "epoch seconds (a decimal number)", "ms": "epoch milliseconds (a decimal number)",
             "iso": "ISO-8601 date or date-time (no timezone = UTC), or epoch seconds"}
    unit_rule: dict[str, Literal["auto", "s", "ms"]] = {"s": "s", "ms": "ms", "iso": "auto"}
    p = Path(path)
    wanted: dict[str, str | int] = {"user": user, "item": item, "ts": ts}
    if order is not None:
        wanted["order"] = order
    spec = ",".join(f"{k}={v}" for k, v in wanted.items())
    layout = (f"a {sep!r}-separated file with columns {spec}"
              f"{' named in a header line' if header else ' (no header line)'}, ts as {units.get(ts_unit, ts_unit)}")
    if ts_unit not in units:
        raise DataFileError(f"unknown timestamp unit {ts_unit!r}; use one of {', '.join(units)}")
    if not sep:
        raise DataFileError("the field separator is empty")
    text = _read_text(p, layout)

    def rows_of() -> Iterable[tuple[int, list[str]]]:
        if len(sep) == 1:
            reader = csv.reader(io.StringIO(text), delimiter=sep)
            try:
                for fields in reader:
                    yield reader.line_num, fields
            except csv.Error as err:
                raise DataFileError(f"{p}:{reader.line_num}: not readable as {sep!r}-separated text ({err})") from None
        else:
            for lineno, line in enumerate(text.split("\n"), 1):
                yield lineno, line.rstrip("\r").split(sep)

    cols: dict[str, int] | None = None
    if not header:
        names = [f"{k}={v!r}" for k, v in wanted.items() if not isinstance(v, int)]
        if names:
            raise DataFileError(f"{p}: columns {', '.join(names)} are given by name but the file has no header "
                                "line (--no-header): give 0-based column indices, or --header")
        cols = {k: int(v) for k, v in wanted.items()}
    bad_idx = [f"{k}={v}" for k, v in wanted.items() if isinstance(v, int) and v < 0]
    if bad_idx:
        raise DataFileError(f"column indices are 0-based and >= 0, got {', '.join(bad_idx)}")

    def number(text_: str) -> float:
        x = float(text_)
        if not math.isfinite(x):
            raise ValueError("not finite")
        return x

    out: list[tuple[float, float, Interaction]] = []
    first_data = True
    for lineno, fields in rows_of():
        if not fields or not any(f.strip() for f in fields):
            continue
        if cols is None:  # the header line
            seen = [f.strip() for f in fields]
            cols = {}
            for key, want in wanted.items():
                if isinstance(want, int):
                    cols[key] = want
                    continue
                if want in seen:
                    cols[key] = seen.index(want)
                    continue
                folded = [i for i, f in enumerate(seen) if f.lower() == want.lower()]
                if len(folded) != 1:
                    raise DataFileError(
                        f"{p}:{lineno}: the header has no column {want!r} (header: {seen!r}, split on {sep!r}; "
                        f"columns asked for: {spec})")
                cols[key] = folded[0]
            continue
        is_first, first_data = first_data, False
        need = max(cols.values()) + 1
        if len(fields) < need:
            raise DataFileError(f"{p}:{lineno}: expected at least {need} fields split on {sep!r} for columns "
                                f"{spec}, got {len(fields)} ({fields[:8]!r})")
        try:
            u = canonical_user_id(fields[cols["user"]].strip())
            i = canonical_item_id(fields[cols["item"]].strip(), item_id_type)
            t = parse_timestamp(fields[cols["ts"]], unit_rule[ts_unit])
        except FieldError as err:
            hint = ""
            if is_first and not header and all(_NAME.fullmatch(f.strip()) for f in fields if f.strip()):
                hint = f"; line {lineno} {[f.strip() for f in fields]!r} looks like a header: pass --header"
            raise DataFileError(f"{p}:{lineno}: {err}{_hint(err, item_id_type)} (columns {spec}; --ts-unit "
                                f"{ts_unit} expects {units[ts_unit]}){hint}") from None
        rank = 0.0
        if order is not None:
            o_text = fields[cols["order"]].strip()
            try:
                rank = number(o_text)
            except ValueError:
                raise DataFileError(f"{p}:{lineno}: bad order value {o_text!r} in column order={order} "
                                    "(a finite number)") from None
        out.append((t, rank, Interaction(u, i, t)))
    if not out:
        raise DataFileError(f"{p}: no interactions{' (only a header?)' if header else ''}; expected {layout}")
    out.sort(key=lambda r: (r[0], r[1]))  # stable: ties keep file order
    return [r[2] for r in out]
