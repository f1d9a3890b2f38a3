"""Worker building blocks without a broker: update preview == store.apply, seen-item exclusion over the window."""

from __future__ import annotations

from pathlib import Path

import torch

from adrec_stream.data.events import Interaction
from adrec_stream.model import ModelConfig, build_model, save_checkpoint
from adrec_stream.serving.recommender import Recommender
from adrec_stream.state.store import SequenceStore, SourceRecord
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.score import recommend_windows


def _rec(p: int, o: int, user: str | None, item: str = "1") -> SourceRecord:
    ev = Interaction(user, item, float(o), f"e{p}-{o}") if user is not None else None
    return SourceRecord("clicks", p, o, ev)


def test_preview_equals_apply_including_skips_and_trimming(tmp_path: Path):
    with SequenceStore(tmp_path / "db", window=3) as store:
        store.apply([_rec(0, 0, "a", "1"), _rec(0, 1, "a", "2"), _rec(1, 0, "b", "9")])
        batch = [
            _rec(0, 1, "a", "X"),   # at the stored offset: re-delivered, skipped
            _rec(0, 2, "a", "3"),
            _rec(1, 1, None),       # dead letter: only advances the offset
            _rec(0, 3, "a", "4"),   # window 3: "1" drops out
            _rec(1, 2, "b", "8"),
            _rec(0, 3, "a", "Y"),   # duplicate inside the batch: skipped
            _rec(2, 0, "c", "5"),   # new partition, new user
        ]
        preview = store.preview(batch)
        assert store.sequence("a") == ["1", "2"]  # preview wrote nothing
        applied = store.apply(batch)
    assert preview == applied
    assert [(u.user_id, u.items) for u in preview] == [
        ("a", ["1", "2", "3"]), ("a", ["2", "3", "4"]), ("b", ["9", "8"]), ("c", ["5"])]


def _tiny_recommender(tmp_path: Path) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, max_len=4, num_heads=2, num_blocks=1, diffusion_steps=4)
    vocab = [str(i) for i in range(1, 21)]
    path = save_checkpoint(tmp_path / "m.pt", build_model(20, cfg).eval(), vocab=vocab,
                           config=cfg.model_dump(mode="json"), meta={"item_counts": list(range(21))})
    return Recommender.from_checkpoint(path, deterministic=True)


def _serving(seen: str, last_n: int = 1) -> StreamConfig:
    return StreamConfig(top_k=5, scoring={"seen_items": seen, "exclude_last_n": last_n})


def test_seen_items_settings_over_the_whole_window_not_only_the_model_input(tmp_path: Path):
    rec = _tiny_recommender(tmp_path)
    window = [str(i) for i in range(1, 13)]  # 12 items; the model (max_len 4) sees only the last 4
    plain = recommend_windows(rec, [window], _serving("keep"))[0]
    excl = recommend_windows(rec, [window, []], _serving("exclude"))
    last3 = recommend_windows(rec, [window], _serving("exclude_last", 3))[0]
    assert len(plain.items) == 5
    assert len(excl[0].items) == 5 and not set(excl[0].items) & set(window)
    assert excl[0].scores == sorted(excl[0].scores, reverse=True)
    assert excl[1].fallback is True and excl[1].items == ["20", "19", "18", "17", "16"]  # popularity
    # the last 3 clicked items are never offered; older ones may be; the rest of the ranking is the plain one
    assert not {"10", "11", "12"} & set(last3.items)
    keep = [i for i in recommend_windows(rec, [window], StreamConfig(top_k=20, scoring={"seen_items": "keep"}))[0].items
            if i not in {"10", "11", "12"}]
    assert last3.items == keep[:5]


def test_default_serving_setting_excludes_seen_items():
    assert StreamConfig().scoring.seen_items == "exclude"
