"""Restricted unpickler and the paper's dataset.pkl splits (real files in ../shared/data/adrec)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.safe_pickle import safe_load_pickle
from adrec_stream.errors import DataFileError, UnsafePickleError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec"

# users, items, interactions (notes table / SOURCE.md)
EXPECTED = {
    "baby": (11761, 4731, 92823),
    "beauty": (10553, 6086, 94148),
    "ml-100k": (938, 1008, 54413),
    "sports": (22686, 12301, 185718),
    "toys": (11268, 7309, 95420),
}


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reduce_payload_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "dataset.pkl"
    bad.write_bytes(pickle.dumps({"train": [[1, 2]], "x": _Payload(marker)}))
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(bad)
    assert "system" in str(info.value) and str(bad) in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        load_adrec_dataset(bad)
    assert not marker.exists()


@pytest.mark.parametrize("value", [{1, 2}, b"raw", frozenset([3]), bytearray(b"x"), complex(1, 2)])
def test_types_outside_the_allowed_set_are_refused(tmp_path: Path, value: object) -> None:
    f = tmp_path / "x.pkl"
    f.write_bytes(pickle.dumps({"train": [value]}))
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(f)


def test_plain_containers_load(tmp_path: Path) -> None:
    obj = {"a": [1, 2.5, "s", None, True, (3, 4)], "b": {"c": []}}
    f = tmp_path / "ok.pkl"
    f.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    assert safe_load_pickle(f) == obj


def test_missing_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as info:
        safe_load_pickle(tmp_path / "nope" / "dataset.pkl")
    assert "nope/dataset.pkl" in str(info.value) and '"train"' in str(info.value)
    f = tmp_path / "t.pkl"
    f.write_bytes(pickle.dumps({"train": [[1, 2, 3]] * 50})[:-20])
    with pytest.raises(DataFileError) as info:
        safe_load_pickle(f)
    assert not isinstance(info.value, UnsafePickleError)


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ([1, 2], "keys train/val/test"),
        ({"train": [[1, 2]], "val": [[3]], "test": []}, "aligned"),
        ({"train": [[1, 0]], "val": [[3]], "test": [[4]]}, ">= 1"),
        ({"train": [[1, 2]], "val": [[3, 5]], "test": [[4]]}, "exactly 1"),
        ({"train": [[1, "2"]], "val": [[3]], "test": [[4]]}, "integers"),
        ({"train": [], "val": [], "test": []}, "no users"),  # split-stats printed NaN tables for it
    ],
)
def test_malformed_splits_are_rejected(tmp_path: Path, obj: object, fragment: str) -> None:
    f = tmp_path / "dataset.pkl"
    f.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataFileError) as info:
        load_adrec_dataset(f)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_counts(name: str) -> None:
    ds = load_adrec_dataset(DATA / name)  # the folder form; the file form is used elsewhere
    assert (ds.n_users, ds.n_items, ds.n_interactions) == EXPECTED[name]
    assert ds.name == name
    assert len(ds.vocab()) == ds.n_items and ds.vocab()[0] == "1"
    counts = ds.item_counts()
    assert len(counts) == ds.n_items + 1 and counts[0] == 0
    assert sum(counts) == sum(len(s) for s in ds.train)
