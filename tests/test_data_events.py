"""Interaction-log readers (adrec_stream.data.events) on the real MovieLens files and edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from adrec_stream.data.events import (
    Interaction,
    build_vocabulary,
    chronological_split,
    item_counts,
    read_interactions,
    user_sequences,
)
from adrec_stream.errors import DataFileError

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
        ("ml100k", "1\t2\t3\t100\n\n1\t2\t3\tsoon\n", 3, "bad timestamp"),
        ("ml1m", "1::2::3::100\n1::2::x::100\n", 2, "bad rating"),
        ("mlcsv", "userId,movieId,rating,timestamp\n1,2,3.0,100\n1,2\n", 3, "expected 4 fields"),
        ("mlcsv", "user,item,rating,ts\n1,2,3.0,100\n", 1, "expected the header"),
        ("csv", "u,i,10\n,i,11\n", 2, "empty user or item"),
        ("csv", "u,i,10\nu,i,nan\n", 2, "not finite"),
        ("csv", "u,i,10\nu,i,10,good\n", 2, "bad rating"),
        ("csv", "u,i,10\nu,i\n", 2, "expected 3 fields"),
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
    binary.write_bytes(b"\xff\xfe\x00garbage")
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
