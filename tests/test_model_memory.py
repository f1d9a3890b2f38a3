"""The training step's memory-saving paths compute exactly what the plain ops compute: the chunked full-softmax CE
and gradient accumulation over micro-batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adrec_stream.model import ModelConfig, build_model
from adrec_stream.model.losses import full_softmax_cross_entropy
from adrec_stream.training import trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("rows,chunk", [(37, 8), (37, 37), (64, 16), (5, 0), (1, 4)])
def test_chunked_ce_equals_the_full_logits_ce_in_value_and_gradients(rows: int, chunk: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    table = torch.randn(11, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 11, (rows,), generator=gen)
    got = full_softmax_cross_entropy(h, table, targets, chunk)
    g_h, g_t = torch.autograd.grad(got * 3.0, (h, table))
    want = F.cross_entropy(h @ table.t(), targets)
    w_h, w_t = torch.autograd.grad(want * 3.0, (h, table))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.allclose(g_h, w_h, atol=1e-12) and torch.allclose(g_t, w_t, atol=1e-12)


def test_chunked_ce_passes_gradcheck_and_refuses_a_negative_chunk() -> None:
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    table = torch.randn(7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 7, (9,), generator=gen)
    assert torch.autograd.gradcheck(lambda a, b: full_softmax_cross_entropy(a, b, targets, 4), (h, table))
    with pytest.raises(ValueError, match="chunk_rows must be >= 0"):
        full_softmax_cross_entropy(h, table, targets, -1)


def test_chunked_ce_keeps_no_rows_by_items_tensor_for_the_backward() -> None:
    """What makes it worth having: with 64 rows in chunks of 16 over 500 items, no (64, 500) tensor is saved."""
    h = torch.randn(64, 8, requires_grad=True)
    table = torch.randn(500, 8, requires_grad=True)
    targets = torch.randint(0, 500, (64,))
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full_softmax_cross_entropy(h, table, targets, 16)
    assert (64, 500) not in saved and saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full_softmax_cross_entropy(h, table, targets, 0)
    assert (64, 500) in saved  # the unchunked path does keep the logits' log-softmax


def _step(micro_batches: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    cfg = ModelConfig(kind="sasrec", hidden_size=16, num_heads=2, max_len=10, dropout=0.0, emb_dropout=0.0)
    model = build_model(40, cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    gen = torch.Generator().manual_seed(2)
    hist = torch.randint(1, 41, (7, 10), generator=gen)
    hist[0, :8] = 0  # rows of very different lengths: the parts hold different numbers of target tokens
    hist[3, :5] = 0
    tgt = torch.randint(1, 41, (7, 10), generator=gen) * (hist != 0)
    out = trainer._optimizer_step(model, opt, params, hist, tgt, None, (), micro_batches)
    return {"loss": out["loss"], **{k: v.detach().clone() for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("parts", [2, 3, 7, 20])
def test_micro_batches_give_the_whole_batch_update(parts: int) -> None:
    whole, split = _step(1), _step(parts)
    assert split["loss"].item() == pytest.approx(whole["loss"].item(), rel=1e-5)
    for key, value in whole.items():
        assert torch.allclose(split[key], value, atol=1e-6), key


def test_micro_batches_and_chunk_rows_are_validated_training_settings() -> None:
    from pydantic import ValidationError

    from adrec_stream.training.config import TrainConfig

    assert TrainConfig().micro_batches == 1 and TrainConfig().ce_chunk_rows == 2048
    with pytest.raises(ValidationError, match="micro_batches"):
        TrainConfig(micro_batches=0)
    with pytest.raises(ValidationError, match="ce_chunk_rows"):
        TrainConfig(ce_chunk_rows=-1)


def test_train_micro_batches_setting_reaches_the_optimiser_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.micro_batches`` is what train_model passes to every optimiser step, and a SASRec+ stage (dropout 0,
    so no random draws apart from the shared shuffling) gives the same weights with 1 and with 3 parts (and
    different weights with a different batch size: the comparison can fail)."""
    import numpy as np

    from adrec_stream.training.config import ExperimentConfig, TrainConfig
    from adrec_stream.training.trainer import train_model

    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in rng.integers(1, 31, size=int(rng.integers(3, 12)))] for _ in range(40)]
    model_cfg = ModelConfig(kind="sasrec", hidden_size=16, num_heads=2, max_len=8, positional=True, dropout=0.0,
                            emb_dropout=0.0)

    seen: list[int] = []
    real_step = trainer._optimizer_step

    def spy(*args, **kwargs):
        seen.append(args[7])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "_optimizer_step", spy)

    def weights(**train: int) -> dict[str, torch.Tensor]:
        exp = ExperimentConfig(model=model_cfg, train=TrainConfig(finetune_epochs=2, eval_every=1, **train))
        return train_model(seqs, 30, exp, progress=False).model.state_dict()

    whole = weights(batch_size=16)
    assert seen and set(seen) == {1}
    seen.clear()
    split = weights(batch_size=16, micro_batches=3)
    assert len(seen) == 2 * 3 and set(seen) == {3}  # 40 users / 16 = 3 batches per epoch, 2 epochs
    other = weights(batch_size=8)
    assert all(torch.allclose(split[k], v, atol=1e-5) for k, v in whole.items())
    assert not torch.allclose(other["item_emb.weight"], whole["item_emb.weight"], atol=1e-5)
