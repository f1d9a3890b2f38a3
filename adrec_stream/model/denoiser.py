"""ADM denoisers (ADRec's autoregressive diffusion module): map ``c + λ·(x_t + time_emb(t))`` (B, L, d) to the
x0-prediction (B, L, d).

* :class:`AttentionDenoiser` ("att", default): a causal post-LN Transformer with the same masks as the CAM.
  At inference only the last position changes between reverse steps, so the history prefix is run once and
  its per-layer keys/values are cached (:meth:`AttentionDenoiser.prefix_cache`); each step then costs one token
  (:meth:`AttentionDenoiser.step`). Exact, because the prefix never attends to the last position.
* :class:`MLPDenoiser` ("mlp"): per-token residual FFN blocks; at inference only the last position is run.
"""

from __future__ import annotations

import torch
from torch import nn

from adrec_stream.model.config import ModelConfig
from adrec_stream.model.layers import FeedForwardBlock, KVCache, TransformerBlock, attention_mask

#: one group of rows: (per-layer (keys, values), each (b, H, P+1, d/H) = prefix + one free slot; mask (b, 1, 1, P+1))
GroupCache = tuple[list[KVCache], torch.Tensor] | None
#: [(rows of the batch, GroupCache), ...]; None for the MLP denoiser
PrefixCache = list[tuple[slice, GroupCache]] | None


class AttentionDenoiser(nn.Module):
    """Causal Transformer denoiser ("att")."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.hidden_size, cfg.num_heads, cfg.dropout, cfg.dropout_masks) for _ in range(cfg.num_blocks)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """h: (B, L, d) denoiser input; mask: (B, 1, L, L) from ``attention_mask`` or None → x0-pred (B, L, d)."""
        for block in self.blocks:
            h = block(h, mask)
        return h

    def prefix_cache(self, h_prefix: torch.Tensor, valid_prefix: torch.Tensor) -> GroupCache:
        """Run the P history positions of one group of rows once and keep each layer's keys/values.

        Args:
            h_prefix: (b, P, d) denoiser input of the prefix (P may be 0).
            valid_prefix: (b, P) bool, True at real positions.

        Returns:
            (per-block (keys, values), each (b, H, P+1, d/H) — the prefix plus a free last slot that :meth:`step`
            fills with the denoised position —, mask (b, 1, 1, P+1) bool for that step).
        """
        b, p, d = h_prefix.shape
        shape = (b, self.num_heads, p + 1, d // self.num_heads)
        mask = attention_mask(valid_prefix) if p else None
        layers = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            keys, values = h_prefix.new_zeros(shape), h_prefix.new_zeros(shape)
            if p:
                if i < last:
                    h_prefix, (k, v) = block(h_prefix, mask, return_kv=True)
                else:  # the last block's prefix outputs are never used: keys/values suffice
                    k, v = block.keys_values(h_prefix)
                keys[:, :, :p] = k
                values[:, :, :p] = v
            layers.append((keys, values))
        own = valid_prefix.new_ones(b, 1)
        return layers, torch.cat([valid_prefix, own], dim=1)[:, None, None, :]

    def step(self, h_last: torch.Tensor, caches: PrefixCache) -> torch.Tensor:
        """x0-prediction of the last position.

        Args:
            h_last: (B, d) denoiser input of the last position.
            caches: ``[(rows, group_cache), ...]`` covering the batch, ``rows`` a slice, ``group_cache`` from
                :meth:`prefix_cache` (its free slots are overwritten in place).

        Returns:
            (B, d).
        """
        if caches is None:
            raise ValueError("the attention denoiser needs the prefix caches from prefix_cache()")
        for i, block in enumerate(self.blocks):
            h_last = block.step(h_last, [(rows, layers[i], mask) for rows, (layers, mask) in caches])
        return h_last


class MLPDenoiser(nn.Module):
    """Per-token denoiser ("mlp"): ``num_blocks`` residual post-LN FFN blocks (d → 4d → d, GELU)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FeedForwardBlock(cfg.hidden_size, cfg.dropout, cfg.dropout_masks)
                                    for _ in range(cfg.num_blocks))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) → (B, L, d); ``mask`` is ignored (positions are independent)."""
        for block in self.blocks:
            h = block(h)
        return h

    def prefix_cache(self, h_prefix: torch.Tensor, valid_prefix: torch.Tensor) -> GroupCache:
        """No state needed: positions do not interact."""
        return None

    def step(self, h_last: torch.Tensor, caches: PrefixCache) -> torch.Tensor:
        """x0-prediction of the last position (B, d) alone."""
        return self.forward(h_last)


#: row count below which adjacent length groups share one attention call per reverse step. 1 = no merging: on the
#: CPU the single-query attention's cost grows with the keys read (padded keys included), and merging to 256 rows
#: padded the baby test batches from ~10 to ~14 keys per row; unmerged, scoring ran 0-14 % faster per user with one
#: thread and level within the noise with two (interleaved A/Bs, scripts/bench_step_groups.py, docs/benchmarks.md).
#: Kept as a knob: merging pays only where a call's fixed cost dominates.
MIN_STEP_GROUP_ROWS = 1


def merge_group_caches(caches: PrefixCache, min_rows: int = MIN_STEP_GROUP_ROWS) -> PrefixCache:
    """Merge adjacent (length-sorted) group caches until each holds at least ``min_rows`` rows.

    Fewer, larger attention calls per reverse step save each call's fixed cost, but the shorter members are
    left-padded with masked keys (exact: zero attention weight) that are still read, and on the CPU the per-key cost
    dominates for the baby batches (see :data:`MIN_STEP_GROUP_ROWS`, whose default 1 leaves the groups unmerged).

    Args:
        caches: ``[(rows, (layers, mask)), ...]`` with contiguous, ascending ``rows`` slices and ascending widths.
        min_rows: target minimum rows per merged group (the last group may be smaller).

    Returns:
        The merged list, same format (groups that need no merging are passed through unchanged).
    """
    if caches is None:
        return None
    runs: list[list[tuple[slice, GroupCache]]] = [[]]
    for entry in caches:
        runs[-1].append(entry)
        if sum(r.stop - r.start for r, _ in runs[-1]) >= min_rows:
            runs.append([])
    if not runs[-1]:
        runs.pop()
    merged = []
    for run in runs:
        if len(run) == 1:
            merged.append(run[0])
            continue
        start, stop = run[0][0].start, run[-1][0].stop
        width = max(group[1].shape[-1] for _, group in run)
        first_layers, first_mask = run[0][1]
        mask = first_mask.new_zeros(stop - start, 1, 1, width)
        shape = (stop - start, first_layers[0][0].shape[1], width, first_layers[0][0].shape[3])
        layers = [(k.new_zeros(shape), v.new_zeros(shape)) for k, v in first_layers]
        for rows, (group_layers, group_mask) in run:
            r = slice(rows.start - start, rows.stop - start)
            w = group_mask.shape[-1]
            mask[r, ..., width - w :] = group_mask
            for (keys, values), (k, v) in zip(layers, group_layers, strict=True):
                keys[r, :, width - w :] = k
                values[r, :, width - w :] = v
        merged.append((slice(start, stop), (layers, mask)))
    return merged


def build_denoiser(cfg: ModelConfig) -> AttentionDenoiser | MLPDenoiser:
    """The denoiser named by ``cfg.denoiser``."""
    return AttentionDenoiser(cfg) if cfg.denoiser == "att" else MLPDenoiser(cfg)
