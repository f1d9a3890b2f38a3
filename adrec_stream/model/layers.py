"""Building blocks shared by ADRec and SASRec: masks, post-LN Transformer blocks with a key/value cache,
per-token feed-forward blocks and the diffusion time embedding.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels on CPU and CUDA) with a
boolean mask that combines the causal mask and a **key**-padding mask (ADRec notes, "known pitfalls": the
reference masks padded queries instead, so its outputs depend on the amount of left padding). Padding query
rows would have no admissible key; they are allowed to attend to themselves so that no row is fully masked
(no NaN), and they never influence real positions because real queries never attend to padding keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

#: (keys, values) of one block, each (B, H, P, d/H)
KVCache = tuple[torch.Tensor, torch.Tensor]

#: how training-time dropout draws its masks (``model.dropout_masks``, see :func:`make_dropout`)
DropoutMasks = Literal["bernoulli", "random_bits"]

#: largest drop probability of random-bits masks: p is drawn rounded to a whole number of 65,536ths while the kept
#: elements are scaled by 1 / (1 - p), so the output's mean is off by at most 2^-17 / (1 - p) relative: <= 0.08 % here
MAX_RANDOM_BITS_P = 0.99


def _check_random_bits_p(p: float) -> None:
    if not 0.0 <= p <= MAX_RANDOM_BITS_P:
        raise ValueError(f"random-bits dropout probability must be in [0, {MAX_RANDOM_BITS_P}] (16-bit masks), got {p}")


def random_bits_dropout(x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """Inverted dropout whose masks come from 16 uniformly random bits per element.

    Each element is zeroed with probability ``round(p * 65536) / 65536`` (p to within 2^-17; a p below 2^-17 drops
    nothing) and the kept ones are scaled by ``1 / (1 - p)``. The bits are drawn as 64-bit integers from torch's
    generator (seeded like every other draw, so runs stay reproducible) and read as four 16-bit lanes each. On CPU
    this dropout of 819,200 elements takes 0.58x (2 threads) to 0.83x (1 thread) the time of
    :func:`torch.nn.functional.dropout`, whose per-element Bernoulli mask draws took 18 % of a training step in a
    profile, and whole training steps take 0.72-0.86x the time (``scripts/bench_dropout_masks.py``, docs/benchmarks.md;
    docs/results.md, "Six minutes").

    Args:
        x: any shape, floating point.
        p: drop probability in [0, :data:`MAX_RANDOM_BITS_P`] (0.99: closer to 1 the 16-bit rounding of p would bias
            the output's mean).
        inplace: write into ``x`` (saves a copy; only for an ``x`` that autograd does not keep for the backward
            pass of the operation that made it, e.g. the output of a Linear, an embedding or a GELU).

    Returns:
        Tensor of ``x``'s shape (differentiable in ``x``; ``x`` itself when ``inplace``).

    Raises:
        ValueError: p outside [0, :data:`MAX_RANDOM_BITS_P`].
    """
    _check_random_bits_p(p)
    if p <= 0.0:
        return x
    words = (x.numel() + 3) // 4
    bits = torch.empty(words, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    lanes = bits.view(torch.int16)[: x.numel()].view(x.shape)  # uniform on [-2^15, 2^15)
    # kept -> 1 / (1 - p), dropped -> 0, as a float tensor: one multiplication forward and one backward (autograd
    # keeps this tensor), cheaper on CPU than masked_fill with a bool mask both ways
    scaled_keep = (lanes >= round(p * 65536) - 32768).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x.mul_(scaled_keep) if inplace else x * scaled_keep


class RandomBitsDropout(nn.Module):
    """:class:`torch.nn.Dropout` with masks from :func:`random_bits_dropout` (identity in eval mode); ``inplace``:
    see there."""

    def __init__(self, p: float, inplace: bool = False) -> None:
        super().__init__()
        _check_random_bits_p(p)
        self.p = p
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…) → (…): dropout in training mode, ``x`` itself in eval mode."""
        return random_bits_dropout(x, self.p, self.inplace) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


def make_dropout(p: float, masks: DropoutMasks = "bernoulli") -> nn.Module:
    """Dropout layer for ``model.dropout_masks``: "bernoulli" = :class:`torch.nn.Dropout` (per-element Bernoulli
    draws, the reference code's), "random_bits" = :class:`RandomBitsDropout` (same distribution to within 2^-17 in
    p, cheaper on CPU, see :func:`random_bits_dropout`; a different random stream, so the same seed trains different weights). The
    random-bits layer works in place: every dropout of these models takes the fresh output of a Linear, an
    embedding (plus positions), a LayerNorm or a GELU, none of which autograd keeps (the attention probabilities,
    which softmax's backward needs, go through :func:`random_bits_dropout` out of place).

    Raises:
        ValueError: unknown ``masks``."""
    if masks == "bernoulli":
        return nn.Dropout(p)
    if masks == "random_bits":
        return RandomBitsDropout(p, inplace=True)
    raise ValueError(f"dropout masks must be 'bernoulli' or 'random_bits', got {masks!r}")


def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(L, L) bool, True at ``j <= i``."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril_()


def attention_mask(valid: torch.Tensor) -> torch.Tensor | None:
    """Causal + key-padding mask for self-attention.

    Args:
        valid: (B, L) bool, True at real (non-padding) positions.

    Returns:
        (B, 1, L, L) bool mask, True = "query i may attend to key j": ``j <= i and valid[j]``, plus the diagonal
        (so padding queries attend to themselves only). ``None`` when no position is padding, meaning "plain
        causal" (lets the fused kernel use ``is_causal=True``).
    """
    if bool(valid.all()):
        return None
    length = valid.shape[1]
    causal = _causal_mask(length, valid.device)
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye).unsqueeze(1)


class FeedForward(nn.Module):
    """Position-wise FFN d → 4d → d with GELU and dropout (the FFN of a Transformer block); ``masks``: see
    :func:`make_dropout`."""

    def __init__(self, d: int, dropout: float, masks: DropoutMasks = "bernoulli") -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.dropout = make_dropout(dropout, masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, d) → (…, d)."""
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Post-LN Transformer block: ``x = LN(x + Drop(MHA(x)))``, ``x = LN(x + Drop(FFN(x)))``.

    Supports incremental decoding: :meth:`forward` can return the per-head keys/values of its input, and
    :meth:`step` runs new query positions against cached keys/values (exact, because attention is causal).
    ``masks`` (:func:`make_dropout`) applies to every dropout of the block, attention probabilities included (with
    "random_bits" the training-time attention is computed explicitly so that its probabilities take those masks).
    """

    def __init__(self, d: int, num_heads: int, dropout: float, masks: DropoutMasks = "bernoulli") -> None:
        super().__init__()
        if d % num_heads:
            raise ValueError(f"hidden size {d} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_attn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, dropout, masks)
        self.ln_ffn = nn.LayerNorm(d)
        self.dropout = make_dropout(dropout, masks)
        self.attn_dropout = dropout
        self.masks = masks

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # each (B, H, L, d/H)

    def keys_values(self, x: torch.Tensor) -> KVCache:
        """Keys and values of ``x`` (B, L, d), each (B, H, L, d/H), without running the rest of the block."""
        _, k, v = self._heads(x)
        return k, v

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, _, length, _ = attn.shape
        attn = attn.transpose(1, 2).reshape(b, length, -1)
        x = self.ln_attn(x + self.dropout(self.proj(attn)))
        return self.ln_ffn(x + self.dropout(self.ffn(x)))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, *, return_kv: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal self-attention block.

        Args:
            x: (B, L, d).
            mask: (B, 1, L, L) bool from :func:`attention_mask`, or None for a plain causal mask.
            return_kv: also return this block's keys and values, each (B, H, L, d/H), for :meth:`step`.

        Returns:
            (B, L, d), or ((B, L, d), (keys, values)) when ``return_kv``.
        """
        q, k, v = self._heads(x)
        p = self.attn_dropout if self.training else 0.0
        if p > 0.0 and self.masks == "random_bits":
            attn = _attention_with_dropout(q, k, v, mask, p)
        elif mask is None:
            attn = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self._finish(x, attn)
        return (out, (k, v)) if return_kv else out

    def step(self, x: torch.Tensor, caches: Sequence[tuple[slice, KVCache, torch.Tensor]]) -> torch.Tensor:
        """Run ONE new last position per row against cached prefix keys/values.

        Args:
            x: (B, d) input of the new positions (2-D: the step path avoids length-1 dimensions).
            caches: one entry per group of rows ``(rows, (keys, values), mask)``: ``rows`` a slice of the batch;
                keys / values (b, H, P+1, d/H) hold the group's P prefix positions plus one free last slot, which
                this call overwrites in place with the new position's key / value (no copy of the prefix per step);
                ``mask`` (b, 1, 1, P+1) bool is True at real prefix positions and at the last slot. Groups may have
                different P, so short histories do not read the padding of long ones.

        Returns:
            (B, d), equal to the last row of :meth:`forward` on each concatenated sequence (to float rounding).

        Raises:
            RuntimeError: called in training mode (this path has no dropout; it serves inference only).

        The residual additions are folded into the GEMMs (``addmm`` with the residual as the accumulator) and
        the GELU runs in place, so a step allocates few (B, 4d) / (B, d) buffers: the per-step work is the
        12·d² multiply-adds per row and the attention against the cache, little else.
        """
        if self.training:
            raise RuntimeError("TransformerBlock.step is an inference path; call model.eval() first")
        b, d = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(b, 3, self.num_heads, 1, d // self.num_heads)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # each (B, H, 1, d/H)
        attn = x.new_empty(b, self.num_heads, 1, d // self.num_heads)
        for rows, (keys, values), mask in caches:
            keys[:, :, -1:] = k[rows]
            values[:, :, -1:] = v[rows]
            attn[rows] = F.scaled_dot_product_attention(q[rows], keys, values, attn_mask=mask)
        x = self.ln_attn(torch.addmm(x, attn.view(b, d), self.proj.weight.t()).add_(self.proj.bias))
        hidden = torch.ops.aten.gelu_(torch.addmm(self.ffn.fc1.bias, x, self.ffn.fc1.weight.t()))
        return self.ln_ffn(torch.addmm(x, hidden, self.ffn.fc2.weight.t()).add_(self.ffn.fc2.bias))


def _attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            p: float) -> torch.Tensor:
    """``softmax(q·kᵀ/√d_h + mask) → random_bits_dropout(p) → ·v`` (what scaled_dot_product_attention computes in
    training, with the random-bits masks). q, k, v: (B, H, L, d_h); mask: (B, 1, L, L) bool or None (causal)."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))
    if mask is None:
        mask = _causal_mask(q.shape[-2], q.device)
    probs = torch.softmax(scores.masked_fill_(~mask, -math.inf), dim=-1)
    return torch.matmul(random_bits_dropout(probs, p), v)


class FeedForwardBlock(nn.Module):
    """Post-LN residual FFN block ``x = LN(x + Drop(FFN(x)))`` (one layer of the per-token "mlp" denoiser);
    ``masks``: see :func:`make_dropout`."""

    def __init__(self, d: int, dropout: float, masks: DropoutMasks = "bernoulli") -> None:
        super().__init__()
        self.ffn = FeedForward(d, dropout, masks)
        self.ln = nn.LayerNorm(d)
        self.dropout = make_dropout(dropout, masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, d) → (…, d), each position independently."""
        return self.ln(x + self.dropout(self.ffn(x)))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: (...) float timesteps (ADRec feeds t' = t·1000/T).
        dim: even embedding size d.

    Returns:
        (..., d) float: ``[cos(t'·ω_i), sin(t'·ω_i)]`` with ω_i = 10000^(−i/(d/2)), i < d/2.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """ADM time embedding: MLP d → 4d → d (SiLU) over ``sinusoidal(t·1000/T)``."""

    def __init__(self, d: int, steps: int) -> None:
        super().__init__()
        self.d = d
        self.steps = steps
        self.scale = 1000.0 / steps
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))

    def table(self, device: torch.device | None = None) -> torch.Tensor:
        """Embeddings of all T timesteps, (T, d)."""
        steps = torch.arange(self.steps, device=device if device is not None else self.mlp[0].weight.device)
        return self.mlp(sinusoidal_embedding(steps.float() * self.scale, self.d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (...) integer timesteps in [0, T) → (..., d).

        When more than T timesteps are asked for (training: one per token), the MLP runs once on the T distinct
        timesteps and the result is indexed (same values, a fraction of the cost).
        """
        if t.numel() > self.steps:
            return F.embedding(t, self.table(t.device))
        return self.mlp(sinusoidal_embedding(t.float() * self.scale, self.d))
