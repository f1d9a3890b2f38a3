"""Tests of the ADRec / SASRec models: schedules, masks, losses, scoring paths, item-table growth."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from adrec_stream.config import parse_config
from adrec_stream.errors import ConfigError
from adrec_stream.model import ADRec, ModelConfig, SASRec, build_model, trim_left_padding
from adrec_stream.model.base import SequenceModel, length_groups
from adrec_stream.model.layers import (
    MAX_RANDOM_BITS_P,
    RandomBitsDropout,
    _attention_with_dropout,
    attention_mask,
    make_dropout,
    random_bits_dropout,
    sinusoidal_embedding,
)
from adrec_stream.model.schedule import NoiseSchedule, make_betas, sampling_timesteps

N_ITEMS = 60


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(**kw) -> ModelConfig:
    base = dict(hidden_size=32, num_heads=2, max_len=12, diffusion_steps=8)
    base.update(kw)
    return ModelConfig(**base)


def model_of(seed: int = 0, **kw) -> ADRec | SASRec:
    torch.manual_seed(seed)
    return build_model(N_ITEMS, small_cfg(**kw))


def left_pad(seqs: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([[0] * (length - len(s)) + s for s in seqs])


def shifted(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) pairs of a left-padded batch of full sequences: targets = next item, 0 at padding."""
    inp, tgt = history[:, :-1], history[:, 1:].clone()
    tgt[inp == 0] = 0
    return inp, tgt


# ---------------------------------------------------------------- config and schedules
def test_config_defaults_and_validation():
    cfg = ModelConfig()
    assert (cfg.hidden_size, cfg.max_len, cfg.num_heads, cfg.diffusion_steps) == (128, 50, 4, 32)
    assert cfg.schedule == "trunc_lin" and cfg.denoiser == "att" and cfg.positional is False
    assert cfg.lambda_uncertainty == 0.001 and cfg.emb_dropout == 0.3
    assert ModelConfig(dropout=0, lambda_uncertainty=1).dropout == 0.0  # YAML ints accepted for floats
    with pytest.raises(ValidationError, match="divide hidden_size"):
        ModelConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValidationError, match="sampling_steps"):
        ModelConfig(diffusion_steps=8, sampling_steps=9)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"hiden_size": 64}, ModelConfig, "x.yaml")
    with pytest.raises(ConfigError, match="hidden_size"):
        parse_config({"hidden_size": "64"}, ModelConfig, "x.yaml")


def test_trunc_lin_schedule_values():
    betas = make_betas("trunc_lin", 32)
    assert betas.shape == (32,)
    assert betas[0].item() == pytest.approx(0.013125, abs=1e-12)
    assert betas[-1].item() == pytest.approx(0.635, abs=1e-12)
    diffs = betas[1:] - betas[:-1]
    assert torch.allclose(diffs, torch.full_like(diffs, (0.635 - 0.013125) / 31), atol=1e-12)


def test_linear_and_cosine_schedules():
    lin = make_betas("linear", 32)
    assert lin[0].item() == pytest.approx(0.003125) and lin[-1].item() == pytest.approx(0.625)
    assert make_betas("linear", 1000)[-1].item() == pytest.approx(0.02)
    cos = make_betas("cosine", 32)
    s = 0.008

    def f(t: float) -> float:
        return math.cos((t / 32 + s) / (1 + s) * math.pi / 2) ** 2

    abar = torch.cumprod(1 - cos, 0)
    assert abar[10].item() == pytest.approx(f(11) / f(0), rel=1e-9)
    assert cos.max().item() <= 0.999 and cos[-1].item() == pytest.approx(0.999)
    small = make_betas("trunc_lin", 8)  # 0.02·125 + 0.01 > 1: clipped
    assert small.max().item() == 0.999 and small[0].item() == pytest.approx(0.0225)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_betas("quadratic", 10)


def test_sampling_timesteps_and_reverse_coefficients():
    assert sampling_timesteps(32, None) == list(range(31, -1, -1))
    assert sampling_timesteps(32, 4) == [31, 20, 10, 0]
    assert sampling_timesteps(32, 1) == [31]
    for steps in range(2, 33):
        ts = sampling_timesteps(32, steps)
        assert len(set(ts)) == steps and ts[0] == 31 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError):
        sampling_timesteps(32, 33)
    sched = NoiseSchedule("trunc_lin", 32)
    _, _, std = sched.reverse_coefficients(5, 4)
    assert std == pytest.approx(math.sqrt(sched.betas[5].item()), rel=1e-6)
    assert sched.reverse_coefficients(0, -1) == pytest.approx((1.0, 0.0, 0.0))
    # one-step posterior mean with x_t = sqrt(abar_t) x0 (no noise) and the true x0 stays on the data path
    abar = sched.alphas_cumprod.double()
    cx0, cxt, _ = sched.reverse_coefficients(10, 3)
    assert cx0 + cxt * math.sqrt(abar[10]) == pytest.approx(math.sqrt(abar[3]), rel=1e-6)


def test_q_sample_formula():
    sched = NoiseSchedule("trunc_lin", 32)
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    t = torch.tensor([0, 7, 31])
    xt = sched.q_sample(x0, t, eps)
    abar = torch.cumprod(1 - make_betas("trunc_lin", 32), 0).float()
    expected = abar[t].sqrt()[:, None] * x0 + (1 - abar[t]).sqrt()[:, None] * eps
    assert torch.allclose(xt, expected, atol=1e-6)


# ---------------------------------------------------------------- masks and padding invariance
def test_attention_mask_shape_and_padding_rows():
    valid = torch.tensor([[False, True, True], [False, False, False]])
    mask = attention_mask(valid)
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert mask[1, 0].tolist() == torch.eye(3, dtype=torch.bool).tolist()
    assert attention_mask(torch.ones(2, 3, dtype=torch.bool)) is None


@pytest.mark.parametrize("kind,positional", [("adrec", False), ("adrec", True), ("sasrec", True)])
def test_outputs_independent_of_left_padding(kind, positional):
    model = model_of(kind=kind, positional=positional).eval()
    seq = [5, 9, 2, 44, 17]
    batch = left_pad([seq, seq, seq, [7]], 12)
    batch[0] = left_pad([seq], 12)[0]
    outs = [model.encode(left_pad([seq], n))[0, -5:] for n in (5, 8, 12)]
    for other in outs[1:]:
        assert torch.allclose(outs[0], other, atol=1e-5)
    enc = model.encode(batch)
    assert torch.allclose(enc[0, -5:], outs[0], atol=1e-5)
    assert torch.all(enc[3, :-1] == 0)  # padding positions are zeroed
    assert torch.isfinite(model.encode(torch.zeros(2, 6, dtype=torch.long))).all()


@pytest.mark.parametrize("kind", ["adrec", "sasrec"])
def test_input_order_norm_then_dropout(kind):
    """input_order: "dropout_norm" feeds the blocks LN(Dropout(x)) (normalised rows); "norm_dropout" feeds
    Dropout(LN(x)) (the reference SASRec: zeros and 1/(1-p)-scaled entries); identical in eval mode."""
    hist = left_pad([[1, 2, 3, 4, 5, 6, 7, 8]], 8)
    seen = {}
    models = {}
    for order in ("dropout_norm", "norm_dropout"):
        model = model_of(kind=kind, positional=True, emb_dropout=0.5, input_order=order)
        model.cam[0].register_forward_pre_hook(lambda _m, args, o=order: seen.__setitem__(o, args[0].detach()))
        model.train()
        torch.manual_seed(3)
        model.encode(hist)
        models[order] = model.eval()
    rows = seen["dropout_norm"][0]
    assert torch.allclose(rows.mean(-1), torch.zeros(8), atol=1e-4)  # LN last: every row normalised
    noisy = seen["norm_dropout"][0]
    assert (noisy == 0).float().mean() > 0.3  # dropout last: about half the entries are zero
    ln = models["norm_dropout"].emb_ln
    clean = ln(models["norm_dropout"].item_emb(hist) + models["norm_dropout"].pos_emb(torch.arange(4, 12)))[0]
    kept = noisy != 0
    assert torch.allclose(noisy[kept], clean.detach()[kept] * 2.0, atol=1e-5)  # kept entries scaled by 1/(1-p)
    assert torch.allclose(models["dropout_norm"].encode(hist), models["norm_dropout"].encode(hist), atol=1e-6)
    with pytest.raises(ValidationError, match="input_order"):
        ModelConfig(input_order="norm_first")


def test_sasrec_visible_padding_keys():
    """padding_keys: visible (the reference mask): histories are re-padded to max_len, real positions see the
    padding; a history without padding scores as with masked keys; ADRec refuses it."""
    torch.manual_seed(0)
    visible = build_model(N_ITEMS, small_cfg(kind="sasrec", positional=True, padding_keys="visible")).eval()
    masked = build_model(N_ITEMS, small_cfg(kind="sasrec", positional=True)).eval()
    masked.load_state_dict(visible.state_dict())
    short = left_pad([[5, 9, 2, 44], [7, 3]], 12)
    inp, tgt = shifted(short)
    ti, tt = trim_left_padding(inp, tgt)
    assert visible.loss(ti, tt)["loss"].item() == pytest.approx(visible.loss(inp, tgt)["loss"].item(), abs=1e-6)
    assert not torch.allclose(visible.score(short[:, -4:]), masked.score(short[:, -4:]), atol=1e-4)
    assert torch.allclose(visible.score(short[:, -4:]), visible.score(short), atol=1e-6)
    full = torch.arange(1, 13).unsqueeze(0)
    assert torch.allclose(visible.score(full), masked.score(full), atol=1e-5)
    assert torch.isfinite(visible.score(torch.zeros(2, 3, dtype=torch.long))[:, 1:]).all()
    with pytest.raises(ValidationError, match="padding_keys"):
        ModelConfig(kind="adrec", padding_keys="visible")


def test_trim_left_padding_is_exact_for_the_loss():
    model = model_of(kind="sasrec").eval()
    hist = left_pad([[1, 2, 3, 4], [5, 6]], 12)
    inp, tgt = shifted(hist)
    ti, tt = trim_left_padding(inp, tgt)
    assert ti.shape == (2, 3)
    assert model.loss(inp, tgt)["loss"].item() == pytest.approx(model.loss(ti, tt)["loss"].item(), abs=1e-5)
    (all_pad,) = trim_left_padding(torch.zeros(2, 5, dtype=torch.long))
    assert all_pad.shape == (2, 1)


# ---------------------------------------------------------------- training loss
def test_independent_timesteps_per_token():
    model = model_of()
    targets = left_pad([list(range(1, 11)), [3, 4]], 12)
    t = model.sample_timesteps(targets, torch.Generator().manual_seed(1))
    assert t.shape == targets.shape and t.dtype == torch.long
    assert torch.all(t[targets == 0] == 0)
    assert t.min() >= 0 and t.max() < 8
    assert len(set(t[0, 2:].tolist())) >= 4  # tokens of one sequence get different timesteps


@pytest.mark.parametrize("denoiser", ["att", "mlp"])
def test_loss_finite_and_backward(denoiser):
    model = model_of(denoiser=denoiser)
    inp, tgt = shifted(left_pad([[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]], 10))
    out = model.loss(inp, tgt)
    assert set(out) == {"loss", "ce", "mse"}
    assert torch.isfinite(out["loss"]) and out["ce"] > 0 and out["mse"] > 0
    assert out["loss"].item() == pytest.approx(0.5 * (out["ce"] + out["mse"]).item(), rel=1e-6)
    assert out["ce"].item() == pytest.approx(math.log(N_ITEMS), rel=0.2)  # untrained: near-uniform softmax
    out["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("denoiser.", "cam.", "time_emb.")):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.item_emb.weight.grad[0].abs().sum() == 0  # padding row gets no gradient
    assert model.item_emb.weight.grad[1].abs().sum() > 0


def test_loss_with_frozen_item_table_and_empty_batch():
    model = model_of()
    model.item_emb.weight.requires_grad_(False)
    inp, tgt = shifted(left_pad([[1, 2, 3], [4, 5, 6, 7]], 8))
    model.loss(inp, tgt)["loss"].backward()
    assert model.item_emb.weight.grad is None
    assert model.cam[0].qkv.weight.grad is not None
    empty = torch.zeros(2, 5, dtype=torch.long)
    out = model.loss(empty, empty)
    assert out["loss"].item() == 0.0
    out["loss"].backward()  # still differentiable


def test_loss_reproducible_with_generator_and_noise_matters():
    model = model_of(lambda_uncertainty=1.0).eval()
    inp, tgt = shifted(left_pad([[1, 2, 3, 4, 5], [6, 7, 8]], 8))
    a = model.loss(inp, tgt, generator=torch.Generator().manual_seed(3))["loss"]
    b = model.loss(inp, tgt, generator=torch.Generator().manual_seed(3))["loss"]
    c = model.loss(inp, tgt, generator=torch.Generator().manual_seed(4))["loss"]
    assert a.item() == b.item() and a.item() != c.item()


def test_sasrec_loss_is_full_softmax_ce():
    model = model_of(kind="sasrec").eval()
    inp, tgt = shifted(left_pad([[1, 2, 3, 4], [5, 6]], 6))
    out = model.loss(inp, tgt)
    h = model.encode(inp)
    keep = tgt != 0
    logits = h[keep] @ model.item_emb.weight[1:].t()
    expected = torch.nn.functional.cross_entropy(logits, tgt[keep] - 1)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["mse"].item() == 0.0


# ---------------------------------------------------------------- scoring
SCORE_BATCH = [[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3], [2, 7], [1], []]


@pytest.mark.parametrize("denoiser", ["att", "mlp"])
@pytest.mark.parametrize("steps,deterministic", [(None, False), (3, False), (None, True)])
def test_cached_scores_equal_uncached(denoiser, steps, deterministic):
    model = model_of(denoiser=denoiser, positional=denoiser == "mlp", lambda_uncertainty=0.5).eval()
    hist = left_pad(SCORE_BATCH, 12)
    kw = dict(steps=steps, deterministic=deterministic)
    fast = model.score(hist, generator=torch.Generator().manual_seed(7), use_cache=True, **kw)
    ref = model.score(hist, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.allclose(fast[:, 1:], ref[:, 1:], atol=1e-5)
    # extra left padding changes nothing either (trimmed in the cached path, masked in the reference path)
    wide = model.score(left_pad(SCORE_BATCH, 20), generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.allclose(fast[:, 1:], wide[:, 1:], atol=1e-5)


def test_score_shape_padding_column_and_randomness():
    model = model_of().eval()
    hist = left_pad(SCORE_BATCH, 12)
    s = model.score(hist, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, N_ITEMS + 1)
    assert torch.all(s[:, 0] == float("-inf"))
    assert torch.isfinite(s[:, 1:]).all()  # includes the all-padding history
    other = model.score(hist, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(s[:, 1:], other[:, 1:])
    d1 = model.score(hist, deterministic=True)
    d2 = model.score(hist, deterministic=True)
    assert torch.equal(d1, d2)
    with pytest.raises(ValueError, match="sampling steps"):
        model.score(hist, steps=9)


def test_score_longer_than_max_len_uses_newest_items():
    model = model_of().eval()
    long = torch.arange(1, 21).unsqueeze(0)  # 20 > max_len 12
    a = model.score(long, deterministic=True)
    b = model.score(long[:, -12:], deterministic=True)
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"item ids must be in \[0, 60\]"):
        model.score(torch.tensor([[1, 61]]))


def test_sasrec_score_is_last_hidden_dot_items():
    model = model_of(kind="sasrec", positional=True).eval()
    hist = left_pad([[4, 5, 6], []], 7)
    s = model.score(hist)
    expected = model.encode(hist)[:, -1] @ model.item_emb.weight.t()
    assert torch.allclose(s[:, 1:], expected[:, 1:], atol=1e-5)
    assert torch.all(s[:, 0] == float("-inf")) and torch.isfinite(s[:, 1:]).all()


def test_grow_items_keeps_old_rows():
    model = model_of()
    model.item_emb.weight.requires_grad_(False)
    old = model.item_emb.weight.clone()
    model.grow_items(N_ITEMS + 5)
    w = model.item_emb.weight
    assert w.shape == (N_ITEMS + 6, 32) and model.n_items == N_ITEMS + 5
    assert torch.equal(w[: N_ITEMS + 1], old) and w[0].abs().sum() == 0
    assert w[N_ITEMS + 1 :].std() > 0.005 and not w.requires_grad
    model.grow_items(10)  # smaller: no-op
    assert model.n_items == N_ITEMS + 5
    assert model.eval().score(torch.tensor([[N_ITEMS + 5]]), deterministic=True).shape == (1, N_ITEMS + 6)


def test_gathered_ce_equals_reference_all_position_ce():
    model = model_of().eval()
    inp, tgt = shifted(left_pad([[1, 2, 3, 4, 5], [6, 7, 8], [9]], 8))
    fast = model.loss_terms(inp, tgt, generator=torch.Generator().manual_seed(5))
    ref = model.loss_terms(inp, tgt, generator=torch.Generator().manual_seed(5), gather_valid=False)
    assert fast[0].item() == pytest.approx(ref[0].item(), rel=1e-5)
    assert fast[1].item() == pytest.approx(ref[1].item(), rel=1e-6)


def test_time_embedding_table_path_matches_direct_path():
    model = model_of()
    t = torch.randint(0, 8, (3, 7))
    direct = model.time_emb.mlp(sinusoidal_embedding(t.float() * 1000 / 8, 32))
    assert torch.allclose(model.time_emb(t), direct, atol=1e-6)


def test_length_groups_sort_rows_and_bound_padding():
    lengths = [0, 7, 1, 50, 2, 6, 12, 3, 45, 5]
    hist = left_pad([list(range(1, n + 1)) for n in lengths], 50)
    order, groups = length_groups(hist)
    assert [lengths[i] for i in order.tolist()] == sorted(lengths)
    assert groups[0] == slice(0, 2) and groups[-1].stop == len(lengths)
    sorted_lengths = sorted(lengths)
    spans = [(sorted_lengths[g.start], sorted_lengths[g.stop - 1]) for g in groups]
    assert spans == [(0, 1), (2, 2), (3, 3), (5, 5), (6, 7), (12, 12), (45, 50)]
    assert all(hi <= max(1, 1.25 * lo) + 1 for lo, hi in spans)


@pytest.mark.parametrize("kind", ["adrec", "sasrec"])
def test_batched_scores_equal_one_user_at_a_time(kind):
    model = model_of(kind=kind, lambda_uncertainty=0.3).eval()
    seqs = [list(range(1, n + 1)) for n in (12, 0, 3, 1, 9, 2, 5)]
    batched = model.score(left_pad(seqs, 12), deterministic=True)
    for row, seq in enumerate(seqs):
        alone = model.score(left_pad([seq], 12), deterministic=True, use_cache=False)
        assert torch.allclose(batched[row, 1:], alone[0, 1:], atol=1e-5), row


@pytest.mark.parametrize("min_rows", [1, 3, 1000])
def test_cached_scores_with_any_step_group_merging(monkeypatch, min_rows):
    monkeypatch.setattr("adrec_stream.model.denoiser.MIN_STEP_GROUP_ROWS", min_rows)
    model = model_of(lambda_uncertainty=0.5).eval()
    seqs = [list(range(1, n + 1)) for n in (12, 0, 3, 1, 9, 2, 5, 7, 7, 4, 11)]
    hist = left_pad(seqs, 12)
    fast = model.score(hist, generator=torch.Generator().manual_seed(2))
    ref = model.score(hist, generator=torch.Generator().manual_seed(2), use_cache=False)
    assert torch.allclose(fast[:, 1:], ref[:, 1:], atol=1e-5)


@pytest.mark.parametrize("kind", ["adrec", "sasrec"])
def test_empty_batch_scores(kind):
    model = model_of(kind=kind).eval()
    assert model.score(torch.zeros(0, 12, dtype=torch.long)).shape == (0, N_ITEMS + 1)


@pytest.mark.parametrize("kind", ["adrec", "sasrec"])
def test_both_model_kinds_satisfy_the_model_contract(kind):
    """The SequenceModel contract callers rely on: max_len, n_items, loss dict, (B, N+1) scores, grow_items."""
    model = model_of(kind=kind, positional=kind == "sasrec")
    assert isinstance(model, SequenceModel)
    assert model.max_len == model.cfg.max_len == 12 and model.n_items == N_ITEMS
    assert type(model).loss is not SequenceModel.loss and type(model).score is not SequenceModel.score
    inp, tgt = shifted(left_pad([[1, 2, 3, 4], [5, 6]], 5))
    out = model.loss(inp, tgt)
    assert set(out) == {"loss", "ce", "mse"} and all(v.dim() == 0 for v in out.values())
    model.grow_items(N_ITEMS + 4)
    assert model.n_items == N_ITEMS + 4 and model.item_emb.weight.shape[0] == N_ITEMS + 5
    s = model.eval().score(left_pad([[N_ITEMS + 4], [1, 2], []], 3), deterministic=True)
    assert s.shape == (3, N_ITEMS + 5) and torch.all(s[:, 0] == float("-inf"))


def test_base_model_leaves_loss_and_score_to_subclasses():
    base = SequenceModel(N_ITEMS, small_cfg())
    hist = left_pad([[1, 2]], 3)
    with pytest.raises(NotImplementedError, match=r"SequenceModel must implement loss"):
        base.loss(hist, hist)
    with pytest.raises(NotImplementedError, match=r"SequenceModel must implement score"):
        base.score(hist)
    assert base.max_len == 12


# ---------------------------------------------------------------- dropout masks (model.dropout_masks)
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_random_bits_dropout_drops_p_and_scales_the_rest(p):
    torch.manual_seed(3)
    x = torch.full((1000, 1001), 2.0)  # odd element count: the last 64-bit word is only partly used
    out = random_bits_dropout(x, p)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.003  # 1,001,000 draws: 5 standard deviations at most
    assert torch.allclose(out[~dropped], torch.tensor(2.0 / (1.0 - p)))
    assert abs(out.mean().item() - 2.0) < 0.03  # inverted dropout keeps the mean
    lanes = dropped.flatten()[:1_000_000].view(-1, 4).float().mean(0)  # the four 16-bit lanes of each 64-bit word
    assert torch.all((lanes - p).abs() < 0.006), lanes  # none biased (a word's sign bit would bias one lane)
    torch.manual_seed(3)
    assert torch.equal(random_bits_dropout(x, p), out)  # torch's seeded generator: reproducible
    assert random_bits_dropout(x, 0.0) is x


def test_random_bits_dropout_up_to_its_cap_keeps_the_mean_and_beyond_is_refused():
    """Near p = 1 the 16-bit rounding of p against the exact 1/(1 - p) scaling biases the mean (and a p within 2^-17
    of 1 wrapped the int16 threshold and dropped nothing, scaling by 1/(1 - p): found by reviewers, kept as tests);
    random-bits masks stop at p = 0.99, where the mean is still exact to 0.1 %."""
    torch.manual_seed(2)
    x = torch.ones(1 << 22)
    out = random_bits_dropout(x, MAX_RANDOM_BITS_P)
    assert MAX_RANDOM_BITS_P == 0.99 and abs(float((out == 0).float().mean()) - 0.99) < 0.0003
    assert abs(float(out.mean()) - 1.0) < 0.03  # 41,943 kept elements of 100 each: binomial noise ~0.5 %
    for p in (0.995, 1 - 2**-17, 0.999995, 1.0, -0.1):
        with pytest.raises(ValueError, match="16-bit masks"):
            random_bits_dropout(x, p)
        with pytest.raises(ValueError, match="16-bit masks"):
            RandomBitsDropout(p)
    with pytest.raises(ValidationError, match="emb_dropout must be at most 0.99 with dropout_masks"):
        ModelConfig(dropout_masks="random_bits", emb_dropout=0.999995)
    assert ModelConfig(dropout_masks="bernoulli", emb_dropout=0.999995).emb_dropout == 0.999995


@pytest.mark.parametrize("inplace", [False, True])
def test_random_bits_dropout_gradient_is_the_mask(inplace):
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)
    y = x * 1.0  # a non-leaf, as in the models
    out = random_bits_dropout(y, 0.25, inplace)
    assert (out is y) == inplace
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.allclose(x.grad[kept], torch.tensor(1 / 0.75)) and torch.all(x.grad[~kept] == 0)


def test_make_dropout_kinds_and_eval_mode():
    assert type(make_dropout(0.1)) is torch.nn.Dropout
    layer = make_dropout(0.4, "random_bits")
    assert isinstance(layer, RandomBitsDropout) and "p=0.4, inplace=True" in repr(layer)
    x = torch.ones(5, 7)
    assert layer.eval()(x) is x
    with pytest.raises(ValueError, match="bernoulli"):
        make_dropout(0.1, "uniform")
    with pytest.raises(ValidationError, match="dropout_masks"):
        ModelConfig(dropout_masks="fast")


@pytest.mark.parametrize("padded", [False, True])
def test_explicit_training_attention_equals_sdpa(padded):
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 2, 9, 8) for _ in range(3))
    valid = torch.ones(3, 9, dtype=torch.bool)
    if padded:
        valid[0, :4] = False
        valid[2, :1] = False
    mask = attention_mask(valid)
    assert (mask is None) != padded
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    assert torch.allclose(_attention_with_dropout(q, k, v, mask, 0.0), want, atol=1e-6)


@pytest.mark.parametrize("kw", [{"kind": "adrec"}, {"kind": "adrec", "denoiser": "mlp", "positional": True},
                                {"kind": "sasrec"}, {"kind": "sasrec", "input_order": "norm_dropout"}])
def test_random_bits_masks_train_and_leave_inference_unchanged(kw):
    """Training works with the in-place random-bits layers in every model variant (autograd would raise if one
    overwrote a tensor its backward needs); inference is the same as with Bernoulli masks."""
    bern = model_of(seed=4, **kw)
    bits = model_of(seed=4, dropout_masks="random_bits", **kw)
    assert sum(isinstance(m, RandomBitsDropout) for m in bits.modules()) == sum(
        isinstance(m, torch.nn.Dropout) for m in bern.modules()) > 0
    assert not any(isinstance(m, torch.nn.Dropout) for m in bits.modules())
    inp, tgt = shifted(left_pad([[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]], 10))
    grads = []
    for inplace in (True, False):  # the in-place layers give the out-of-place gradients exactly
        for layer in bits.modules():
            if isinstance(layer, RandomBitsDropout):
                layer.inplace = inplace
        torch.manual_seed(5)
        out = bits.loss(inp, tgt)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        grads.append({n: p.grad.clone() for n, p in bits.named_parameters() if p.grad is not None})
        bits.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("cam.") for n in grads[0])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    bern.eval()
    bits.eval()
    hist = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]], 8)
    assert torch.equal(bits.encode(hist), bern.encode(hist))  # same weights, eval mode: no dropout either way
    torch.manual_seed(9)
    a = bits.score(hist)
    torch.manual_seed(9)
    assert torch.equal(a, bern.score(hist))
