"""Full-softmax cross-entropy against the item table, computed in row chunks.

``CE = mean_i [logsumexp_j(h_i · e_j) − h_i · e_{y_i}]`` over all N real items (ADRec's and SASRec+'s
classification loss, paper Sec. "Training objective"). Materialising the (M, N) logits, their log-softmax and their
gradient takes 3–4 (M, N) float tensors at once (batch 256, L 50: M ≈ 12,800; ≈ 52 MB each with ml-100k's 1,008
items, ≈ 620 MB each with a beauty-sized 12,101), which with a large item table dominates the training step's peak
memory. :func:`full_softmax_cross_entropy` keeps only one (chunk, N) block alive: the forward pass stores
each row's log-sum-exp (M floats), the backward pass recomputes the chunk's logits, turns them into the softmax in
place and accumulates both gradients. One extra (chunk × d × N) matrix product per chunk buys that, and the
element-wise work on cache-sized blocks pays for it: with a beauty-sized table (N = 12,101, batch 256, L 50, 2
threads) a step takes the same time and the process peaks at ≈ 1.6 GB instead of ≈ 3.2 GB
(``scripts/bench_ce_chunks.py``, figures in docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: default rows per chunk: a 2,048 × N float block (8.3 MB at N = 1,008, ml-100k)
DEFAULT_CHUNK_ROWS = 2048


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Autograd function behind :func:`full_softmax_cross_entropy` (chunked path)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        m = h.shape[0]
        lse = h.new_empty(m)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            lse[start:stop] = torch.logsumexp(h[start:stop] @ table.t(), dim=1)
        target_logits = (h * table[targets]).sum(dim=1)
        ctx.save_for_backward(h, table, targets, lse)
        ctx.chunk = chunk
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, table, targets, lse = ctx.saved_tensors
        m = h.shape[0]
        scale = grad_out / m
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for start in range(0, m, ctx.chunk):
            stop = min(start + ctx.chunk, m)
            block = h[start:stop]
            probs = (block @ table.t()).sub_(lse[start:stop, None]).exp_()
            probs[torch.arange(stop - start, device=h.device), targets[start:stop]] -= 1.0
            probs.mul_(scale)
            if grad_h is not None:
                torch.mm(probs, table, out=grad_h[start:stop])
            if grad_table is not None:
                grad_table.addmm_(probs.t(), block)
        return grad_h, grad_table, None, None


def full_softmax_cross_entropy(
    h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """Mean full-softmax cross-entropy of ``h · tableᵀ`` against ``targets``, in row chunks.

    Args:
        h: (M, d) float output vectors, M >= 1.
        table: (N, d) float class embeddings (the real items' rows of the item table; same dtype as ``h``).
        targets: (M,) long class indices in [0, N).
        chunk_rows: rows per chunk; 0 (or a chunk covering all M rows) computes
            :func:`torch.nn.functional.cross_entropy` on the full (M, N) logits instead. The full path is also used
            when ``h`` and ``table`` differ in dtype (mixed precision) or autocast is on.

    Returns:
        scalar mean CE, differentiable with respect to ``h`` and ``table``; equal to
        ``F.cross_entropy(h @ table.T, targets)`` to float rounding (tests compare both the value and the gradients).

    Raises:
        ValueError: ``chunk_rows`` is negative.
    """
    if chunk_rows < 0:
        raise ValueError(f"chunk_rows must be >= 0, got {chunk_rows}")
    full = (
        chunk_rows == 0
        or h.shape[0] <= chunk_rows
        or h.dtype != table.dtype
        or torch.is_autocast_enabled(h.device.type)
    )
    if full:
        return F.cross_entropy(h @ table.t(), targets)
    return _ChunkedSoftmaxCE.apply(h, table, targets, chunk_rows)
