"""Tests of model checkpoints: round trip, atomic write, and refusal of damaged / foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from adrec_stream.errors import CheckpointError
from adrec_stream.model import ADRec, Checkpoint, ModelConfig, SASRec, build_model, load_checkpoint, save_checkpoint

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
    obj["n_items"] = N_ITEMS + 1
    obj["vocab"] = VOCAB + ["new"]
    torch.save(obj, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")


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
