"""Growing vocabulary (adrec_stream.state.vocab) together with a model whose item table grows."""

from __future__ import annotations

import pytest
import torch

from adrec_stream.model import ModelConfig, build_model
from adrec_stream.state.vocab import Vocabulary


def test_indices_follow_checkpoint_convention():
    v = Vocabulary(["10", "0", "7"])
    assert len(v) == 3 and v.index("10") == 1 and v.index("0") == 2 and v.index("x") is None
    assert v.raw(3) == "7" and "0" in v and "x" not in v
    with pytest.raises(IndexError, match="0 is padding"):
        v.raw(0)
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match="str"):
        Vocabulary([1])  # type: ignore[list-item]


def test_extend_appends_only_new_ids_in_first_appearance_order():
    v = Vocabulary(["a", "b"])
    assert v.extend(["c", "a", "d", "c"]) == ["c", "d"]
    assert v.raw_ids == ["a", "b", "c", "d"]
    assert v.encode(["d", "zzz", "a"]) == [4, 1]


def test_counts_extend_an_older_base():
    v = Vocabulary(["a", "b"])
    base = [0, 5, 1]
    v.extend(["c"])
    assert v.counts([["a", "c", "c"], ["unknown", "b"]], base=base) == [0, 6, 2, 2]
    assert v.counts([]) == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="base counts"):
        Vocabulary(["a"]).counts([], base=[0, 1, 2])


def test_grown_vocabulary_scores_with_a_grown_model():
    torch.manual_seed(0)
    v = Vocabulary([str(i) for i in range(5)])
    model = build_model(len(v), ModelConfig(kind="sasrec", hidden_size=16, max_len=8, num_heads=2, num_blocks=1))
    model.eval()
    v.extend(["new-1", "new-2"])
    model.grow_items(len(v))
    hist = torch.tensor([v.encode(["1", "new-2", "3"])])
    scores = model.score(hist)
    assert scores.shape == (1, 8)
    assert torch.isinf(scores[0, 0]) and torch.isfinite(scores[0, 1:]).all()
