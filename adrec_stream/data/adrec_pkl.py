"""The paper's preprocessed leave-one-out splits (``<name>/dataset.pkl``, ADRec reference format).

Format: a pickled dict ``{"train": [[item, ...] per user], "val": [[item] per user],
"test": [[item] per user]}``; one entry per user, aligned across the three keys; item ids are
integers ``1..N`` (0 is padding). Loaded with :func:`~adrec_stream.data.safe_pickle.safe_load_pickle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adrec_stream.data.safe_pickle import EXPECTED_FORMAT, safe_load_pickle
from adrec_stream.errors import DataFileError

DATASET_FILE = "dataset.pkl"


@dataclass
class AdrecDataset:
    """One leave-one-out split.

    Attributes:
        train: per-user training sequence (chronological internal item ids, 1..n_items).
        val: per-user validation target list (one item each).
        test: per-user test target list (one item each).
        n_items: number of items N (= the largest item id; id 0 is padding).
        n_users: number of users.
        n_interactions: sum over users of len(train) + len(val) + len(test).
        name: dataset name (the folder holding ``dataset.pkl``).
    """

    train: list[list[int]]
    val: list[list[int]]
    test: list[list[int]]
    n_items: int
    n_users: int
    n_interactions: int
    name: str

    def item_counts(self) -> list[int]:
        """Training-set interaction count per item id (length n_items + 1, index 0 = padding = 0)."""
        counts = [0] * (self.n_items + 1)
        for seq in self.train:
            for i in seq:
                counts[i] += 1
        return counts

    def vocab(self) -> list[str]:
        """Raw ids of internal items 1..N (the pickle has no raw ids: ``[str(i) for i in 1..N]``)."""
        return [str(i) for i in range(1, self.n_items + 1)]


def resolve_dataset_path(path: str | Path) -> Path:
    """Accept either the ``dataset.pkl`` file or the folder holding it."""
    p = Path(path)
    return p / DATASET_FILE if p.is_dir() else p


def load_adrec_dataset(path: str | Path) -> AdrecDataset:
    """Load and validate a ``dataset.pkl`` split.

    Args:
        path: the pickle file, or the dataset folder holding ``dataset.pkl``.

    Raises:
        DataFileError: missing file, unsafe or invalid pickle, missing keys, no users, misaligned user
            lists, non-integer or out-of-range ids, or val/test lists not of length 1.
    """
    p = resolve_dataset_path(path)
    obj = safe_load_pickle(p)
    if not isinstance(obj, dict) or not {"train", "val", "test"} <= set(obj):
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataFileError(f"{p}: expected keys train/val/test, got {keys}; expected {EXPECTED_FORMAT}")
    parts = {}
    for key in ("train", "val", "test"):
        seqs = obj[key]
        if not isinstance(seqs, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in seqs):
            raise DataFileError(f"{p}: '{key}' must be a list of per-user item lists; expected {EXPECTED_FORMAT}")
        parts[key] = [list(s) for s in seqs]
    n_users = len(parts["train"])
    if n_users == 0:
        raise DataFileError(f"{p}: the split has no users (empty train/val/test lists); expected {EXPECTED_FORMAT}")
    if len(parts["val"]) != n_users or len(parts["test"]) != n_users:
        raise DataFileError(
            f"{p}: train/val/test have {n_users}/{len(parts['val'])}/{len(parts['test'])} users; they must be aligned"
        )
    n_items = 0
    n_interactions = 0
    for key, seqs in parts.items():
        for u, seq in enumerate(seqs):
            if key != "train" and len(seq) != 1:
                raise DataFileError(f"{p}: {key}[{u}] has {len(seq)} items; leave-one-out needs exactly 1")
            for i in seq:
                if type(i) is not int or i < 1:
                    raise DataFileError(f"{p}: {key}[{u}] holds {i!r}; item ids must be integers >= 1 (0 is padding)")
            if seq:
                n_items = max(n_items, max(seq))
            n_interactions += len(seq)
    return AdrecDataset(
        train=parts["train"], val=parts["val"], test=parts["test"], n_items=n_items, n_users=n_users,
        n_interactions=n_interactions, name=p.parent.name,
    )
