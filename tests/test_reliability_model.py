"""Model-side reliability scenarios 10-12 (no broker): a checkpoint from before the vocabulary grew keeps
serving, new items are stored and skipped until a model knows them, and a heavy user's stored window
reaches the model as its last L items."""

from __future__ import annotations

import math

import torch

from adrec_stream.data.events import Interaction
from adrec_stream.model import ModelConfig, build_model, save_checkpoint
from adrec_stream.serving.recommender import Recommender, ReloadingRecommender
from adrec_stream.serving.registry import ModelRegistry
from adrec_stream.state.store import SequenceStore, SourceRecord

OLD_VOCAB = [str(i) for i in range(1, 11)]  # raw "1".."10" -> internal 1..10


def _model(n_items: int, max_len: int = 6):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, max_len=max_len, num_heads=2, num_blocks=1, diffusion_steps=4,
                      deterministic_sampling=True)
    return build_model(n_items, cfg).eval()


def test_old_checkpoint_serves_grown_vocabulary_then_grown_version_takes_over(tmp_path):
    """Scenario 12 (and 10): v1 knows items 1-10; clicks on the later items "11", "12" are skipped at scoring
    (no IndexError, finite scores, never recommended); v2 = v1 grown to 12 items is picked up by the
    reloading recommender and may then use and recommend "11" and "12"."""
    reg = ModelRegistry(tmp_path / "reg")
    old = _model(len(OLD_VOCAB))
    reg.publish(save_checkpoint(tmp_path / "v1.pt", old, vocab=OLD_VOCAB, config={}))
    rr = ReloadingRecommender(reg, poll_s=0)
    hist = ["3", "11", "12", "5"]
    r1 = rr.recommend([hist, ["11", "12"]], k=10)
    assert r1[0].model_version == 1 and r1[0].fallback is False
    assert sorted(r1[0].items, key=int) == OLD_VOCAB and all(math.isfinite(s) for s in r1[0].scores)
    assert r1[1].fallback is True  # only not-yet-learned items -> popularity fallback, no error
    old_only = Recommender.from_checkpoint(reg.latest()[1]).recommend([["3", "5"]], k=10)[0]
    assert r1[0].items == old_only.items  # the unknown items were skipped, not mapped to something else

    grown = _model(len(OLD_VOCAB))
    grown.load_state_dict(old.state_dict())
    grown.grow_items(12)
    reg.publish(save_checkpoint(tmp_path / "v2.pt", grown, vocab=OLD_VOCAB + ["11", "12"], config={}))
    r2 = rr.recommend([hist], k=12)[0]
    assert r2.model_version == 2 and r2.fallback is False
    assert sorted(r2.items, key=int) == OLD_VOCAB + ["11", "12"]


def test_ten_thousand_clicks_model_sees_the_last_l_items(tmp_path):
    """Scenario 11: 10,000 clicks of one user -> the stored window holds the newest ``window`` items and the
    model is fed exactly the last L (= max_len) of them, as internal ids, with finite scores."""
    window, max_len = 50, 6
    with SequenceStore(tmp_path / "db", window=window) as store:
        for start in range(0, 10_000, 2_500):
            store.apply([SourceRecord("clicks", 0, i, Interaction("heavy", str(i % 10 + 1), float(i), f"e{i}"))
                         for i in range(start, start + 2_500)])
        seq = store.sequence("heavy")
    assert seq == [str(i % 10 + 1) for i in range(10_000 - window, 10_000)]
    rec = Recommender(_checkpoint(tmp_path, max_len))
    seen: list[torch.Tensor] = []
    inner = rec.model.score

    def spy(history, **kw):
        seen.append(history.clone())
        return inner(history, **kw)

    rec.model.score = spy
    out = rec.recommend([seq], k=5)[0]
    assert seen[0].tolist() == [[int(x) for x in seq[-max_len:]]]  # raw "k" -> internal k for this vocab
    assert len(out.items) == 5 and all(math.isfinite(s) for s in out.scores)


def _checkpoint(tmp_path, max_len: int):
    from adrec_stream.model import load_checkpoint

    return load_checkpoint(save_checkpoint(tmp_path / "m.pt", _model(len(OLD_VOCAB), max_len), vocab=OLD_VOCAB,
                                           config={}))
