"""Raw item id <-> internal index mapping that can grow (for incremental fine-tuning on fresh windows).

Internal indices follow the checkpoint convention: index 0 is padding, ``vocab[i]`` is the raw id of index
``i + 1``. Growing only appends, so every existing index keeps its meaning and a model enlarged with
``model.grow_items(len(vocab))`` stays compatible with the old one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class Vocabulary:
    """Append-only raw-id vocabulary.

    Args:
        raw_ids: initial raw ids in index order (e.g. ``checkpoint.vocab``); duplicates are refused.

    Raises:
        ValueError: a duplicate or non-str raw id.
    """

    def __init__(self, raw_ids: Iterable[str] = ()) -> None:
        self._raw: list[str] = []
        self._index: dict[str, int] = {}
        for raw in raw_ids:
            if raw in self._index:
                raise ValueError(f"duplicate raw item id {raw!r} in vocabulary (index {self._index[raw]})")
            self._add(raw)

    def _add(self, raw: str) -> int:
        if not isinstance(raw, str):
            raise ValueError(f"raw item ids are str, got {type(raw).__name__} {raw!r}")
        self._raw.append(raw)
        self._index[raw] = len(self._raw)
        return len(self._raw)

    def __len__(self) -> int:
        """Number of real items N (the padding index is not counted)."""
        return len(self._raw)

    def __contains__(self, raw: object) -> bool:
        return raw in self._index

    @property
    def raw_ids(self) -> list[str]:
        """Copy of the raw ids in index order (``[i]`` is index ``i + 1``), as stored in checkpoints."""
        return list(self._raw)

    def index(self, raw: str) -> int | None:
        """Internal index (>= 1) of a raw id, None if unknown."""
        return self._index.get(raw)

    def raw(self, index: int) -> str:
        """Raw id of internal ``index`` (1..N).

        Raises:
            IndexError: 0 (padding) or out of range.
        """
        if not 1 <= index <= len(self._raw):
            raise IndexError(f"item index {index} outside 1..{len(self._raw)} (0 is padding)")
        return self._raw[index - 1]

    def extend(self, raw_ids: Iterable[str]) -> list[str]:
        """Append unseen raw ids in order of first appearance; returns the ones added."""
        added = []
        for raw in raw_ids:
            if raw not in self._index:
                self._add(raw)
                added.append(raw)
        return added

    def encode(self, raw_ids: Sequence[str]) -> list[int]:
        """Indices of the known raw ids of a sequence (unknown ones dropped, order kept)."""
        return [i for i in (self._index.get(r) for r in raw_ids) if i is not None]

    def counts(self, sequences: Iterable[Sequence[str]], base: Sequence[int] | None = None) -> list[int]:
        """Interaction counts per index (length N + 1, entry 0 = 0) over raw sequences, added to ``base``.

        ``base`` (e.g. an older checkpoint's ``meta["item_counts"]``, possibly shorter) is zero-extended.
        The result is the ``meta["item_counts"]`` format used by the popularity fallback.
        """
        out = [0] * (len(self._raw) + 1)
        if base is not None:
            if len(base) > len(out):
                raise ValueError(f"base counts have {len(base)} entries, vocabulary only {len(out)}")
            for i, c in enumerate(base):
                out[i] = int(c)
        for seq in sequences:
            for i in self.encode(seq):
                out[i] += 1
        out[0] = 0
        return out
