"""Tests of model checkpoints: round trip, atomic write, and refusal of damaged / foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from adrec_stream.errors import CheckpointError
from adrec_stream.model import ADRec, Checkpoint, ModelConfig, SASRec, build_model, load_checkpoint, save_checkpoint
from adrec_stream.model.checkpoint import vocab_fingerprint

N_ITEMS = 30
VOCAB = [f"item-{i}" for i in range(1, N_ITEMS + 1)]
HIST = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 7], [0, 0, 0, 0, 0]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(kind: str = "adrec", **kw) -> ADRec | SASRec:
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, hidden_size=16, num_heads=2, max_len=8, diffusion_steps=32, **kw)
    return build_model(N_ITEMS, cfg)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ADRec]:
    model = make_model(denoiser="att", positional=True)
    with torch.no_grad():  # make the weights differ from a fresh build
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.item_emb.weight[0].zero_()
    path = save_checkpoint(
        tmp_path / "run" / "ckpt.pt",
        model,
        vocab=VOCAB,
        config={"model": model.cfg.model_dump(), "train": {"lr": 1e-3, "betas": (0.9, 0.98)}},
        meta={"item_counts": [0] + [1] * N_ITEMS, "epoch": 3},
    )
    return path, model


@pytest.mark.parametrize("kind", ["adrec", "sasrec"])
def test_round_trip_gives_identical_scores(tmp_path: Path, kind: str):
    model = make_model(kind).eval()
    path = save_checkpoint(tmp_path, model, vocab=VOCAB, config={})  # a directory -> <dir>/model.pt
    assert path == tmp_path / "model.pt"
    ck = load_checkpoint(tmp_path)
    assert isinstance(ck, Checkpoint) and type(ck.model) is type(model) and not ck.model.training
    for seed in (0, 1):
        a = model.score(HIST, generator=torch.Generator().manual_seed(seed))
        b = ck.model.score(HIST, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_round_trip_keeps_vocab_config_meta(saved):
    path, model = saved
    ck = load_checkpoint(path, device="cpu")
    assert ck.path == path and ck.vocab == VOCAB
    assert ck.config["train"] == {"lr": 1e-3, "betas": [0.9, 0.98]}  # tuples stored as lists
    assert ck.meta == {"item_counts": [0] + [1] * N_ITEMS, "epoch": 3}
    assert ck.model.cfg == model.cfg and ck.model.n_items == N_ITEMS
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ck.model.state_dict()[name]), name
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_truncated_file_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupted") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_random_bytes_and_missing_file_are_refused(tmp_path: Path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_foreign_and_incompatible_files_are_refused(tmp_path: Path, saved):
    path, _ = saved
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)  # weights_only loader refuses the global
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not an adrec-stream checkpoint"):
        load_checkpoint(plain)
    obj = torch.load(path, weights_only=True)
    obj["format_version"] = 99
    torch.save(obj, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["out_proj.weight"] = torch.zeros(3, 3)  # a weight the model does not have
    torch.save(obj, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(tmp_path / "extra.pt")


def test_save_validates_vocab_and_meta(tmp_path: Path):
    model = make_model()
    with pytest.raises(ValueError, match="vocab must be a list of 30 str"):
        save_checkpoint(tmp_path / "a.pt", model, vocab=VOCAB[:-1], config={})
    with pytest.raises(TypeError, match=r"meta\.obj"):
        save_checkpoint(tmp_path / "b.pt", model, vocab=VOCAB, config={}, meta={"obj": object()})
    assert list(tmp_path.iterdir()) == []


def test_grown_model_round_trip(tmp_path: Path):
    model = make_model().eval()
    model.grow_items(N_ITEMS + 4)
    path = save_checkpoint(tmp_path / "g.pt", model, vocab=VOCAB + ["a", "b", "c", "d"], config={})
    ck = load_checkpoint(path)
    assert ck.model.n_items == N_ITEMS + 4
    assert torch.equal(model.score(HIST, deterministic=True), ck.model.score(HIST, deterministic=True))


# --------------------------------------------------------------------------- vocabulary vs weights


def test_vocabulary_that_does_not_match_the_weights_is_refused(tmp_path: Path, saved):
    path, _ = saved
    obj = torch.load(path, weights_only=True)
    assert obj["format_version"] == 1 and obj["state_dict"]["item_emb.weight"].shape[0] == N_ITEMS + 1
    obj["n_items"] = N_ITEMS + 1
    obj["vocab"] = VOCAB + ["new"]
    torch.save(obj, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "mismatch.pt")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'mismatch.pt'}: vocabulary has 31 items but the item table has 31 rows "
                          "(32 expected): the checkpoint's vocabulary does not match its weights; ")
    assert "does not match its weights" in msg and "\n" not in msg


def test_vocabulary_fingerprint_is_stored_and_checked(tmp_path: Path, saved):
    path, _ = saved
    obj = torch.load(path, weights_only=True)
    assert obj["vocab_sha256"] == vocab_fingerprint(VOCAB) and len(obj["vocab_sha256"]) == 64
    assert vocab_fingerprint(["a", "b"]) != vocab_fingerprint(["b", "a"])
    assert vocab_fingerprint(["a\nb", "c"]) != vocab_fingerprint(["a", "b\nc"])
    # same length, two ids swapped: the row count still fits, the fingerprint does not
    obj["vocab"] = [VOCAB[1], VOCAB[0], *VOCAB[2:]]
    torch.save(obj, tmp_path / "swapped.pt")
    with pytest.raises(CheckpointError, match="fingerprint.*does not match its weights") as err:
        load_checkpoint(tmp_path / "swapped.pt")
    assert str(tmp_path / "swapped.pt") in str(err.value)
    obj["vocab"] = VOCAB
    obj["vocab_sha256"] = 12345  # not a str
    torch.save(obj, tmp_path / "badfp.pt")
    with pytest.raises(CheckpointError, match="vocab_sha256"):
        load_checkpoint(tmp_path / "badfp.pt")


def test_checkpoint_without_fingerprint_still_loads(tmp_path: Path, saved):
    path, model = saved
    obj = torch.load(path, weights_only=True)
    del obj["vocab_sha256"]  # as written before the fingerprint existed
    torch.save(obj, tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt")
    assert ck.vocab == VOCAB and ck.model.n_items == N_ITEMS
    assert torch.equal(ck.model.item_emb.weight, model.item_emb.weight)
