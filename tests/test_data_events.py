"""Interaction-log readers (adrec_stream.data.events) on the real MovieLens files and edge cases; the shared
rules for ids and timestamps against the click decoder and the replay producer."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adrec_stream.data.events import (
    Interaction,
    build_vocabulary,
    chronological_split,
    item_counts,
    read_delimited,
    read_interactions,
    user_sequences,
)
from adrec_stream.errors import DataFileError
from adrec_stream.state.vocab import Vocabulary
from adrec_stream.stream.events import DecodeError, click_key, decode_click, encode_click
from adrec_stream.stream.replay import select_clicks

EVENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "events"
ML100K = EVENTS / "ml-100k" / "u.data"
MLSMALL = EVENTS / "ml-latest-small" / "ratings.csv"
ML1M = EVENTS / "ml-1m-sample100k" / "sample_movielens_rating.dat"


@pytest.fixture(scope="module")
def ml100k() -> list[Interaction]:
    return read_interactions(ML100K)


def _is_time_sorted(rows):
    return all(a.ts <= b.ts for a, b in zip(rows, rows[1:]))


def test_ml100k_counts_and_order(ml100k):
    assert len(ml100k) == 100_000
    assert len({r.user_id for r in ml100k}) == 943
    assert len({r.item_id for r in ml100k}) == 1682
    assert _is_time_sorted(ml100k)
    assert ml100k[0] == Interaction("259", "255", 874724710.0, rating=4.0)
    assert ml100k[-1] == Interaction("729", "272", 893286638.0, rating=4.0)
    assert sorted({r.rating for r in ml100k}) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_ties_keep_file_order(ml100k):
    raw = [ln.split("\t") for ln in ML100K.read_text().splitlines()]
    # file-order position of each (user, item) pair (unique in ML-100K)
    pos = {(u, i): n for n, (u, i, _r, _t) in enumerate(raw)}
    for a, b in zip(ml100k, ml100k[1:]):
        if a.ts == b.ts:
            assert pos[(a.user_id, a.item_id)] < pos[(b.user_id, b.item_id)]
    assert read_interactions(ML100K, "ml100k") == ml100k  # deterministic, explicit format = auto


def test_ml_latest_small_csv_with_header_and_crlf():
    rows = read_interactions(MLSMALL)
    assert len(rows) == 100_836
    assert len({r.user_id for r in rows}) == 610
    assert len({r.item_id for r in rows}) == 9724
    assert _is_time_sorted(rows)
    assert rows[0] == Interaction("429", "22", 828124615.0, rating=4.0)
    assert 0.5 in {r.rating for r in rows}


def test_ml1m_dat_sample():
    rows = read_interactions(ML1M)
    assert len(rows) == 100_000
    assert len({r.user_id for r in rows}) == 5958
    assert len({r.item_id for r in rows}) == 3312
    assert rows[0] == Interaction("6040", "1649", 956704519.0, rating=5.0)
    assert _is_time_sorted(rows)


def test_chronological_split_ml100k(ml100k):
    train, rest = chronological_split(ml100k, 0.8)
    assert (len(train), len(rest)) == (80_000, 20_000)
    assert train[-1].ts <= rest[0].ts
    assert train + rest == ml100k
    assert chronological_split(ml100k, 0.0) == ([], ml100k)
    with pytest.raises(ValueError, match="train_fraction"):
        chronological_split(ml100k, 1.5)


def test_chronological_split_sorts_unsorted_input():
    rows = [Interaction("u", "c", 3.0), Interaction("u", "a", 1.0), Interaction("v", "b", 2.0)]
    train, rest = chronological_split(rows, 0.5)  # round(1.5) == 2
    assert [r.item_id for r in train] == ["a", "b"] and [r.item_id for r in rest] == ["c"]


def test_vocabulary_sequences_and_counts():
    rows = [
        Interaction("u1", "10", 1.0),
        Interaction("u2", "0", 2.0),
        Interaction("u1", "10", 3.0),
        Interaction("u1", "7", 4.0),
    ]
    vocab = build_vocabulary(rows)
    assert vocab == ["10", "0", "7"]  # first appearance; "0" is an ordinary item
    assert build_vocabulary(rows, min_count=2) == ["10"]
    assert user_sequences(rows, vocab) == {"u1": [1, 1, 3], "u2": [2]}
    assert user_sequences(rows, ["7"]) == {"u1": [1]}
    assert item_counts(rows, vocab) == [0, 2, 1, 1]


def test_vocabulary_of_ml100k_train_part(ml100k):
    train, _ = chronological_split(ml100k)
    vocab = build_vocabulary(train)
    counts = item_counts(train, vocab)
    assert len(counts) == len(vocab) + 1 and counts[0] == 0 and sum(counts) == 80_000
    seqs = user_sequences(train, vocab)
    assert sum(len(s) for s in seqs.values()) == 80_000
    assert min(min(s) for s in seqs.values()) == 1 and max(max(s) for s in seqs.values()) == len(vocab)


def test_generic_csv_with_and_without_header(tmp_path):
    f = tmp_path / "clicks.csv"
    f.write_text("user,item,ts\nalice,B001,2024-01-02T00:00:00Z\nbob,0,1704067200\nalice,B002,1704067200,4.5\n")
    rows = read_interactions(f)
    assert rows == [
        Interaction("bob", "0", 1704067200.0),
        Interaction("alice", "B002", 1704067200.0, rating=4.5),
        Interaction("alice", "B001", 1704153600.0),
    ]
    g = tmp_path / "noheader.csv"
    g.write_text("1,2,30\n1,3,10\n")
    assert read_interactions(g, "csv") == [Interaction("1", "3", 10.0), Interaction("1", "2", 30.0)]


def test_missing_file_names_path_and_format(tmp_path):
    with pytest.raises(DataFileError) as info:
        read_interactions(tmp_path / "u.data", "ml100k")
    msg = str(info.value)
    assert str(tmp_path / "u.data") in msg and "user<TAB>item<TAB>rating<TAB>unix_ts" in msg


def test_a_folder_reads_its_one_known_interaction_file(tmp_path):
    """A folder works like in `train --dataset`: its one known file (real ml-100k and ML-1M sample folders);
    a folder with none or several of them is a clear error naming what it holds."""
    root = EVENTS
    if not (root / "ml-100k" / "u.data").is_file():
        pytest.skip(f"{root} not present")
    assert read_interactions(root / "ml-100k") == read_interactions(root / "ml-100k" / "u.data")
    assert len(read_interactions(root / "ml-1m-sample100k")) == 100_000  # sample_movielens_rating.dat
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataFileError, match=r"holding none of u\.data.*it holds: notes\.txt"):
        read_interactions(tmp_path)
    (tmp_path / "u.data").write_text("1\t2\t3\t100\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3,100\n")
    with pytest.raises(DataFileError, match="more than one of"):
        read_interactions(tmp_path)


@pytest.mark.parametrize(
    ("fmt", "text", "lineno", "part"),
    [
        ("ml100k", "1\t2\t3\t100\n1\t2\t3\n", 2, "expected 4 fields"),
        ("ml100k", "1\t2\t3\t100\n\n1\t2\t3\tsoon\n", 3, "bad_ts: 'soon' is neither epoch seconds nor ISO-8601"),
        ("ml1m", "1::2::3::100\n1::2::x::100\n", 2, "bad rating"),
        ("mlcsv", "userId,movieId,rating,timestamp\n1,2,3.0,100\n1,2\n", 3, "expected 4 fields"),
        ("mlcsv", "user,item,rating,ts\n1,2,3.0,100\n", 1, "expected the header"),
        ("csv", "u,i,10\n,i,11\n", 2, "bad_user_id: empty string"),
        ("csv", "u,i,10\nu,i,nan\n", 2, "bad_ts: 'nan' is neither epoch seconds nor ISO-8601"),
        ("csv", "u,i,10\nu,i,-5\n", 2, "bad_ts: '-5' is before 1970-01-01"),
        ("csv", "u,i,10\nu,i,10,good\n", 2, "bad rating"),
        ("csv", "u,i,10\nu,i\n", 2, "expected 3 or 4 fields"),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, fmt, text, lineno, part):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(DataFileError) as info:
        read_interactions(f, fmt)
    assert f"{f}:{lineno}:" in str(info.value) and part in str(info.value)


def test_empty_and_header_only_and_binary_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(DataFileError, match="no interactions"):
        read_interactions(empty)
    header = tmp_path / "header.csv"
    header.write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataFileError, match="only a header"):
        read_interactions(header)
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataFileError, match="not UTF-8"):
        read_interactions(binary)
    with pytest.raises(DataFileError, match="unknown interaction format"):
        read_interactions(ML100K, "parquet")  # type: ignore[arg-type]


def test_gowalla_checkins_reverse_chronological_file():
    path = EVENTS / "gowalla-head50k" / "Gowalla_totalCheckins50000.txt"
    rows = read_interactions(path)
    assert len(rows) == 50_000 and len({r.user_id for r in rows}) == 171
    assert _is_time_sorted(rows)
    user0 = [r for r in rows if r.user_id == "0"]
    assert len(user0) == 225
    # the file lists user 0 newest first; read back oldest first (ISO 'Z' times parsed as UTC)
    assert user0[0] == Interaction("0", "608105", 1274496544.0)  # 2010-05-22T02:49:04Z
    assert user0[-1] == Interaction("0", "22847", 1287532527.0)  # 2010-10-19T23:55:27Z


def test_a_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path):
    """Spreadsheet exports start with a BOM: 'userId,movieId,...' was read as '\\ufeffuserId' and the header row
    failed as data ("bad timestamp 'rating'")."""
    path = tmp_path / "ratings.csv"
    path.write_bytes("\ufeffuserId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n".encode())
    rows = read_interactions(path)
    assert [(r.user_id, r.item_id, r.ts) for r in rows] == [("1", "31", 1260759144.0), ("1", "1029", 1260759179.0)]


# --------------------------------------------------------------------------- byte-order marks and headers


@pytest.fixture(scope="module")
def ml_small() -> list[Interaction]:
    return read_interactions(MLSMALL)


def test_ratings_csv_with_a_byte_order_mark_reads_as_the_original(tmp_path, ml_small):
    """A copy of ml-latest-small/ratings.csv prefixed by a UTF-8 BOM (as spreadsheet exports write it) failed with
    "bad timestamp 'rating'"; every reader now reads it exactly like the original, and so are UTF-16 exports."""
    raw = MLSMALL.read_bytes()
    bom = tmp_path / "ratings.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + raw)
    assert read_interactions(bom) == ml_small  # format auto-detection sees the header, not '\ufeffuserId'
    assert read_interactions(bom, "mlcsv") == ml_small
    assert len(ml_small) == 100_836 and ml_small[0] == Interaction("429", "22", 828124615.0, rating=4.0)
    by_columns = read_delimited(bom, user="userId", item="movieId", ts="timestamp")
    assert [(r.user_id, r.item_id, r.ts) for r in by_columns] == [(r.user_id, r.item_id, r.ts) for r in ml_small]
    utf16 = tmp_path / "ratings-utf16.csv"
    utf16.write_bytes(raw.decode("utf-8").encode("utf-16"))  # Excel's "Unicode text": UTF-16 with its BOM
    assert read_interactions(utf16) == ml_small


def test_a_header_is_read_by_its_names_in_any_order(tmp_path):
    """A header the exact MovieLens spelling does not match was skipped as a 'generic' header and its columns
    taken by position: 'UserID,MovieID,Rating,Timestamp' read the rating as the timestamp."""
    f = tmp_path / "ratings.csv"
    f.write_text("UserID,MovieID,Rating,Timestamp\n1,31,2.5,1260759144\n2,10,4,1260759100\n")
    assert read_interactions(f) == [Interaction("2", "10", 1260759100.0, rating=4.0),
                                    Interaction("1", "31", 1260759144.0, rating=2.5)]
    g = tmp_path / "views.csv"
    g.write_text("time,product_id,session id,source\n2024-01-02,5,s1,web\n2024-01-01,7,s2,app\n")
    assert read_interactions(g) == [Interaction("s2", "7", 1704067200.0), Interaction("s1", "5", 1704153600.0)]


@pytest.mark.parametrize(("fmt", "text", "seen", "expected"), [
    ("auto", "user id,product,when\n1,2,3\n", "['user id', 'product', 'when']",
     "no item / ts column. Expected a header naming the columns (user: user, userid"),
    ("csv", "user-id,item#,stamp\n1,2,3\n", "['user-id', 'item#', 'stamp']",
     "nor a header format 'csv' knows: expected a header naming the columns (user: user, userid"),
    ("auto", "user\titem\trating\ttimestamp\n1\t2\t3\t100\n", "['user', 'item', 'rating', 'timestamp']",
     "nor a header format 'ml100k' knows: expected no header line (MovieLens 100K u.data"),
    ("ml1m", "UserID::MovieID::Rating::Timestamp\n1::2::3::100\n", "['UserID', 'MovieID', 'Rating', 'Timestamp']",
     "nor a header format 'ml1m' knows: expected no header line (MovieLens 1M ratings.dat"),
    ("mlcsv", "\ufeffuser,movie,rating,ts\n1,2,3,100\n", "['user', 'movie', 'rating', 'ts']",
     "expected the header userId,movieId,rating,timestamp"),
])
def test_an_unknown_header_names_the_header_seen_and_the_ones_expected(tmp_path, fmt, text, seen, expected):
    f = tmp_path / "log.txt"
    f.write_text(text)
    with pytest.raises(DataFileError) as info:
        read_interactions(f, fmt)
    msg = str(info.value)
    assert msg.startswith(f"{f}:1: ") and seen in msg and expected in msg


def test_read_delimited_without_header_flag_points_at_the_header(tmp_path):
    f = tmp_path / "log.tsv"
    f.write_text("sid\titem\twhen\n1\ta\t2020-01-01T00:00:00\n")
    with pytest.raises(DataFileError) as info:
        read_delimited(f, user=0, item=1, ts=2, sep="\t", header=False, ts_unit="iso")
    assert str(info.value).startswith(f"{f}:1: bad_ts: 'when' is neither epoch seconds nor ISO-8601")
    assert str(info.value).endswith("line 1 ['sid', 'item', 'when'] looks like a header: pass --header")


# --------------------------------------------------------------------------- one rule for ids and timestamps


def test_millisecond_timestamps_are_refused_by_the_loader_and_the_decoder_alike(tmp_path):
    """A ratings.csv with millisecond timestamps loaded without complaint, then every replayed click was
    dead-lettered bad_ts. Now the loader refuses the file with the decoder's reason and detail; the unit given
    explicitly (read_delimited ts_unit='ms') converts, and those rows replay unchanged."""
    f = tmp_path / "ratings.csv"
    f.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144000\n1,1029,3.0,1260759179000\n")
    with pytest.raises(DataFileError) as info:
        read_interactions(f)
    detail = ("'1260759144000' is too large for epoch seconds (>= 1e11, the year 5138): milliseconds? send or "
              "convert to seconds")
    assert str(info.value).startswith(f"{f}:2: bad_ts: {detail} (a millisecond column: convert it to seconds, or")
    assert _decode_reason({"user_id": "1", "item_id": "31", "ts": "1260759144000"}, "int") == ("bad_ts", detail)
    assert _decode_reason({"user_id": "1", "item_id": "31", "ts": 1260759144000}, "int") == (  # a JSON number
        "bad_ts", detail.replace("'", ""))
    rows = read_delimited(f, user="userId", item="movieId", ts="timestamp", ts_unit="ms", item_id_type="int")
    assert [(r.user_id, r.item_id, r.ts) for r in rows] == [("1", "31", 1260759144.0), ("1", "1029", 1260759179.0)]
    clicks = select_clicks(rows, f.name, item_id_type="int")
    assert [decode_click(encode_click(c), click_key(c)) for c in clicks] == clicks


def test_item_ids_are_canonicalised_alike(tmp_path):
    """With the stream's item_id_type int the loader keys '0012' as '12', as the decoder does (a model trained
    on the file's '0012' never matched the stream's '12'); ids the decoder refuses are refused on load."""
    f = tmp_path / "clicks.csv"
    f.write_text("u1,0012,100\nu1,7,200\n")
    rows = read_interactions(f, "csv", item_id_type="int")
    assert [r.item_id for r in rows] == ["12", "7"] == build_vocabulary(rows)
    assert read_interactions(f, "csv")[0].item_id == "0012"  # item_id_type str: the file's text
    f.write_text("u1,B001,100\n")
    with pytest.raises(DataFileError, match=r":1: bad_item_id: 'B001' is not an integer \(item_id_type int"):
        read_interactions(f, "csv", item_id_type="int")
    assert _decode_reason({"user_id": "u1", "item_id": "B001", "ts": 100}, "int") == ("bad_item_id",
                                                                                      "'B001' is not an integer")


def _decode_reason(obj: dict, item_id_type: str) -> tuple[str, str]:
    with pytest.raises(DecodeError) as info:
        decode_click(json.dumps(obj).encode(), item_id_type=item_id_type)
    return info.value.reason, info.value.detail


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=12)
_user_texts = _text | st.sampled_from(["u1", " u1 ", "42", "007", "", "a\x01b", "u" * 257, "x,y", 'q"t'])
_item_texts = (_text | st.integers(0, 10**20).map(str)
               | st.sampled_from(["0", "0012", "12a", "-3", " 7 ", "", "B001", "1" * 19, "1" * 20, "12.0", "\u0663"]))
_ts_texts = (
    st.integers(-10, 2 * 10**13).map(str)
    | st.floats(min_value=-1.0, max_value=2e11, allow_nan=False).map(repr)
    | st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(9999, 12, 31),
                   timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat())
    | st.sampled_from(["1260759144000", "1e9", "1E9", ".5", "5.", "+7", "nan", "inf", "1_000", "soon", "",
                       "2024-01-02", "2024-01-02T03:04:05Z", "2024-01-02 03:04:05+02:00", "20240102", " 12 "])
    | _text
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=_user_texts, item=_item_texts, ts=_ts_texts, item_id_type=st.sampled_from(["int", "str"]))
def test_a_row_is_accepted_or_refused_alike_by_loader_replay_and_decoder(tmp_path, user, item, ts, item_id_type):
    """Property: a CSV row the loader accepts, replayed (select_clicks, encode_click, decode_click), comes back with
    exactly the same user, item, ts and vocabulary key; the same fields sent as JSON text decode to the same
    values. A row the loader refuses is refused by the decoder with the same reason code and detail."""
    assume(any(v.strip() for v in (user, item, ts)))  # a row of blanks is an empty line, not a row
    f = tmp_path / "row.csv"
    with f.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["user", "item", "ts"], [user, item, ts]])
    as_text = {"user_id": user.strip(), "item_id": item.strip(), "ts": ts}
    try:
        rows = read_interactions(f, "csv", item_id_type=item_id_type)
    except DataFileError as err:
        m = re.match(rf"{re.escape(str(f))}:2: (bad_user_id|bad_item_id|bad_ts): (.*)$", str(err), re.S)
        assert m is not None, str(err)
        reason, detail = _decode_reason(as_text, item_id_type)
        assert reason == m.group(1) and m.group(2).startswith(detail)
        return
    assert len(rows) == 1
    x = rows[0]
    [click] = select_clicks(rows, "row.csv", item_id_type=item_id_type)
    assert click == x._replace(event_id="row.csv:0", rating=None)
    back = decode_click(encode_click(click), click_key(click), item_id_type=item_id_type)
    assert back == click and type(back.ts) is float
    assert build_vocabulary([back]) == build_vocabulary(rows) == [x.item_id]
    assert Vocabulary(build_vocabulary(rows)).index(back.item_id) == 1
    direct = decode_click(json.dumps(as_text).encode(), item_id_type=item_id_type)
    assert (direct.user_id, direct.item_id, direct.ts) == (x.user_id, x.item_id, x.ts)
