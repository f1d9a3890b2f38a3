"""Timestamped interaction logs in their original formats, for replay as click streams.

Supported formats (``fmt``):

- ``"ml100k"``: MovieLens 100K ``u.data``: ``user \\t item \\t rating \\t unix_ts``, no header.
- ``"mlcsv"``: MovieLens ``ratings.csv`` (ml-latest-small, ml-25m...): header ``userId,movieId,rating,timestamp``.
- ``"ml1m"``: MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::unix_ts``, no header.
- ``"gowalla"``: SNAP Gowalla check-ins: ``user \t ISO-8601 time \t lat \t lon \t location_id``; the
  location is the item, there is no rating.
- ``"csv"``: generic ``user,item,ts`` with an optional header line (``ts``: epoch seconds or ISO-8601,
  naive = UTC); an optional 4th column is read as the rating.
- ``"auto"``: by content of the first line (``::`` -> ml1m, five tab-separated fields -> gowalla, other tabs ->
  ml100k, the ml header -> mlcsv, else csv).

Result order is deterministic: stably sorted by timestamp, ties kept in file order. Raw ids are kept as
the file's text (``"196"``), i.e. the same canonical string ids the stream uses.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple

from adrec_stream.errors import DataFileError

Format = Literal["auto", "ml100k", "mlcsv", "ml1m", "gowalla", "csv"]

FORMAT_DESCRIPTIONS: dict[str, str] = {
    "ml100k": "MovieLens 100K u.data: user<TAB>item<TAB>rating<TAB>unix_ts per line, no header",
    "mlcsv": "MovieLens ratings.csv: header userId,movieId,rating,timestamp then one rating per line",
    "ml1m": "MovieLens 1M ratings.dat: user::item::rating::unix_ts per line, no header",
    "gowalla": "Gowalla check-ins: user<TAB>ISO-8601 time<TAB>lat<TAB>lon<TAB>location_id per line, no header",
    "csv": "CSV user,item,ts[,rating] (ts = epoch seconds or ISO-8601), optional header line",
    "auto": "one of: MovieLens u.data (tab), ratings.csv (header), ratings.dat (::), or CSV user,item,ts",
}
_ML_CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*")


class Interaction(NamedTuple):
    """One interaction (a click): the record shared by the file loaders, the wire format and the stores.

    Fields: ``user_id`` and ``item_id`` are canonical raw ids (strings, as in the file or the click's JSON),
    ``ts`` epoch seconds, ``event_id`` a unique id ("" when the source has none: the file loaders leave it
    empty, the replay producer sets ``"<source>:<row>"``, the click decoder ``"topic:partition:offset"`` when
    the record carries none), ``rating`` the explicit rating when the file has one (never on the wire).
    """

    user_id: str
    item_id: str
    ts: float
    event_id: str = ""
    rating: float | None = None


def parse_timestamp(text: str) -> float:
    """Epoch seconds from a decimal number or an ISO-8601 string (timezone-naive = UTC).

    Raises:
        ValueError: not a finite number nor an ISO-8601 date/time.
    """
    text = text.strip()
    try:
        ts = float(text)
    except ValueError:
        dt = datetime.fromisoformat(text)  # ValueError propagates
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    if not math.isfinite(ts):
        raise ValueError(f"{text!r} is not finite")
    return ts


def _detect(first_line: str) -> str:
    if "::" in first_line:
        return "ml1m"
    if "\t" in first_line:
        return "gowalla" if len(first_line.split("\t")) == 5 else "ml100k"
    if [c.strip() for c in first_line.split(",")] == _ML_CSV_HEADER:
        return "mlcsv"
    return "csv"


def _row(path: Path, lineno: int, fields: list[str], fmt: str, has_rating: bool) -> Interaction:
    if fmt == "gowalla":
        if len(fields) != 5:
            raise DataFileError(
                f"{path}:{lineno}: expected 5 fields, got {len(fields)} ({fields[:6]!r}); "
                f"format 'gowalla' is {FORMAT_DESCRIPTIONS['gowalla']}"
            )
        fields = [fields[0], fields[4], fields[1]]
        fmt = "csv"
    want = 4 if has_rating else 3
    if len(fields) != want and not (fmt == "csv" and len(fields) in (3, 4)):
        raise DataFileError(
            f"{path}:{lineno}: expected {want} fields, got {len(fields)} ({fields[:6]!r}); "
            f"format {fmt!r} is {FORMAT_DESCRIPTIONS[fmt]}"
        )
    user, item = fields[0].strip(), fields[1].strip()
    if not user or not item:
        raise DataFileError(f"{path}:{lineno}: empty user or item id in {fields!r}")
    ts_text = fields[3] if fmt in ("ml100k", "mlcsv", "ml1m") else fields[2]
    rating_text = fields[2] if fmt in ("ml100k", "mlcsv", "ml1m") else (fields[3] if len(fields) == 4 else None)
    try:
        ts = parse_timestamp(ts_text)
    except (ValueError, OverflowError, OSError) as err:
        raise DataFileError(
            f"{path}:{lineno}: bad timestamp {ts_text!r} ({err}); expected epoch seconds or ISO-8601"
        ) from None
    rating: float | None = None
    if rating_text is not None and rating_text.strip():
        try:
            rating = float(rating_text)
        except ValueError:
            raise DataFileError(f"{path}:{lineno}: bad rating {rating_text!r} (a number)") from None
        if not math.isfinite(rating):
            raise DataFileError(f"{path}:{lineno}: rating {rating_text!r} is not finite")
    return Interaction(user, item, ts, rating=rating)


def _generic_header(fields: list[str]) -> bool:
    """A generic CSV's first row is a header if all its fields are names (letters, digits, ``_``, spaces,
    starting with a letter or ``_``), e.g. ``user,item,ts`` or ``userId,itemId,timestamp``."""
    return len(fields) >= 3 and all(_NAME.fullmatch(f.strip()) for f in fields)


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
    """The text of an interaction file (UTF-8; a leading byte-order mark, as spreadsheet exports write it, is
    dropped).

    Raises:
        DataFileError: missing, unreadable or not UTF-8; the message names the path and ``expected`` (the format).
    """
    if not p.is_file():
        raise DataFileError(f"interaction file not found: {p} (expected {expected})")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p}: not UTF-8 text at byte {err.start} (expected {expected})") from None
    except OSError as err:
        raise DataFileError(f"cannot read {p}: {err.strerror}") from None


def read_interactions(path: str | Path, fmt: Format = "auto") -> list[Interaction]:
    """Read an interaction log, sorted stably by (timestamp, file order).

    Args:
        path: the file (e.g. ``../shared/data/events/ml-100k/u.data``), or a folder holding exactly one of the
            known file names (:data:`KNOWN_FILE_NAMES`), which is then read.
        fmt: ``"auto"``, ``"ml100k"``, ``"mlcsv"``, ``"ml1m"``, ``"gowalla"`` or ``"csv"`` (module docstring).

    Returns:
        All rows as :class:`Interaction`, oldest first.

    Raises:
        DataFileError: the file is missing/unreadable/not UTF-8 (naming the path and expected format), a
            row is malformed (naming the line number), or the file holds no rows.
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
    rows: list[Interaction] = []
    if kind in ("ml100k", "ml1m", "gowalla"):
        sep = "::" if kind == "ml1m" else "\t"
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                rows.append(_row(p, lineno, line.split(sep), kind, kind != "gowalla"))
    else:
        reader = csv.reader(io.StringIO(text))
        first_row = True
        for fields in reader:
            lineno = reader.line_num
            if not fields or not any(f.strip() for f in fields):
                continue
            is_first, first_row = first_row, False
            if is_first and (kind == "mlcsv" or _generic_header(fields)):
                if kind == "mlcsv" and [f.strip() for f in fields] != _ML_CSV_HEADER:
                    raise DataFileError(f"{p}:{lineno}: expected the header {','.join(_ML_CSV_HEADER)}, got {fields!r}")
                continue
            rows.append(_row(p, lineno, fields, kind, kind == "mlcsv"))
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
                   order: str | int | None = None) -> list[Interaction]:
    """Read any delimited interaction log through a column mapping (``adrec-stream evaluate-replay --columns``).

    A user's own log needs a mapping, not code: e.g. DIGINETICA's ``train-item-views.csv``
    (``session_id;user_id;item_id;timeframe;eventdate``) with ``user="session_id"`` (a session id is a user
    id here), ``item="item_id"``, ``ts="eventdate"``, ``order="timeframe"``, ``sep=";"``, ``ts_unit="iso"``; or
    SNAP Gowalla (``user \\t ISO time \\t lat \\t lon \\t location``, no header) with ``user=0, item=4, ts=1,
    sep="\\t", header=False, ts_unit="iso"``.

    Args:
        path: the file (UTF-8; a leading byte-order mark is ignored).
        user, item, ts: the columns: a header name (str, needs ``header=True``) or a 0-based index (int).
        sep: the field separator; one character is read with :mod:`csv` (quoted fields allowed), a longer one
            (e.g. ``"::"``) splits each line on it.
        header: the first non-empty line names the columns (it is not an interaction).
        ts_unit: ``"s"`` epoch seconds, ``"ms"`` epoch milliseconds, ``"iso"`` ISO-8601 through
            :func:`parse_timestamp` (which also takes epoch seconds). Result times are epoch seconds.
        order: optional numeric column that orders events with equal ``ts`` (e.g. DIGINETICA's ``timeframe``,
            milliseconds since the session started, under a day-resolution ``eventdate``); None = file order.

    Returns:
        :class:`Interaction` rows (rating None), sorted stably by (ts, ``order``, file order), like
        :func:`read_interactions`.

    Raises:
        DataFileError: the file is missing (naming the path and the expected layout), unreadable or not UTF-8;
            a header that lacks a named column (naming the header seen and the columns asked for); a name given
            without a header; a row with too few fields, an empty user/item id, or a bad timestamp / order value
            (naming the file, line and value); no rows.
    """
    units = {"s": "epoch seconds (a decimal number)", "ms": "epoch milliseconds (a decimal number)",
             "iso": "ISO-8601 date or date-time (no timezone = UTC), or epoch seconds"}
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
        need = max(cols.values()) + 1
        if len(fields) < need:
            raise DataFileError(f"{p}:{lineno}: expected at least {need} fields split on {sep!r} for columns "
                                f"{spec}, got {len(fields)} ({fields[:8]!r})")
        u, i = fields[cols["user"]].strip(), fields[cols["item"]].strip()
        if not u or not i:
            raise DataFileError(f"{p}:{lineno}: empty user or item id (columns {spec}) in {fields[:8]!r}")
        ts_text = fields[cols["ts"]].strip()
        try:
            if ts_unit == "iso":
                t = parse_timestamp(ts_text)
            else:
                t = number(ts_text) / (1000.0 if ts_unit == "ms" else 1.0)
        except (ValueError, OverflowError, OSError) as err:
            raise DataFileError(f"{p}:{lineno}: bad timestamp {ts_text!r} in column ts={ts} ({err}); "
                                f"--ts-unit {ts_unit} expects {units[ts_unit]}") from None
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
