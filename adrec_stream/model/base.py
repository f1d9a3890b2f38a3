"""Shared part of ADRec and SASRec: item table, input layer and the causal attention module (CAM).

ADRec (causal attention module): the CAM is a stack of post-LN Transformer blocks over ``LN(Dropout(E[history]))``
with a causal mask; its output ``c`` (B, L, d) holds one condition per position. SASRec (Kang & McAuley 2018) is
the same stack read out directly. Here the mask also hides padding keys, so outputs at real positions do not depend
on the amount of left padding (which makes per-batch padding trimming and prefix caching exact).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adrec_stream.model.config import ModelConfig
from adrec_stream.model.layers import TransformerBlock, attention_mask, make_dropout
from adrec_stream.model.losses import DEFAULT_CHUNK_ROWS, full_softmax_cross_entropy

#: standard deviation of the normal initialisation of item (and position) embeddings
EMB_INIT_STD = 0.02


def trim_left_padding(history: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding (0) in every row of a left-padded batch.

    Exact for these models (key-padding mask + right-aligned positions), and the main training / scoring speed-up
    on short-sequence data sets. At least one column is kept.

    Args:
        history: (B, L) long, left-padded with 0.
        others: tensors of shape (B, L, ...) trimmed the same way (e.g. the targets).

    Returns:
        (history[:, s:], *[o[:, s:] for o in others]) with s the first column holding a real item.
    """
    used = (history != 0).any(dim=0)
    length = history.shape[1]
    start = int(used.to(torch.int8).argmax()) if bool(used.any()) else max(length - 1, 0)
    return (history[:, start:], *(o[:, start:] for o in others))


#: growth factor of the history-length groups of :func:`length_groups`
GROUP_RATIO = 1.25


def length_groups(history: torch.Tensor) -> tuple[torch.Tensor, list[slice]]:
    """Sort the rows of a left-padded batch by history length and cut them into geometric length groups
    (key ``ceil(log(length) / log(1.25))``: 0–1, 2, 3, 4, 5, 6–7, 8–9, 10–11, 12–14, 15–18, …, 45–50).

    Trimming each group to its own longest history computes at most 1.25× the real positions (plus one), instead
    of padding every row to the longest history of the batch.

    Args:
        history: (B, L) long, left-padded with 0.

    Returns:
        (order, groups): ``order`` (B,) LongTensor such that ``history[order]`` is sorted by length (stable), and
        contiguous row ranges of the sorted batch, one per non-empty group, shortest first.
    """
    lengths = (history != 0).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    keys = torch.ceil(torch.log(lengths[order].clamp(min=1).double()) / math.log(GROUP_RATIO) - 1e-9).long()
    _, counts = torch.unique_consecutive(keys, return_counts=True)
    groups, start = [], 0
    for n in counts.tolist():
        groups.append(slice(start, start + n))
        start += n
    return order, groups


class SequenceModel(nn.Module):
    """Item table + input layer + CAM; base class of :class:`ADRec` and :class:`SASRec`.

    The model contract every caller (training, evaluation, serving, streaming fine-tune) relies on, with B the
    batch size, L the history length and N the number of items:

    - :meth:`loss` ``(history (B, L), targets (B, L)) -> {"loss", "ce", "mse"}`` scalars;
    - :meth:`score` ``(history (B, L), *, steps, deterministic, generator, use_cache) -> (B, N+1)`` scores;
    - :attr:`max_len` (the newest ``max_len`` history columns are used), :attr:`n_items` (N);
    - :meth:`grow_items` ``(n)``: enlarge the item table to ``n`` items.

    Subclasses implement :meth:`loss` and :meth:`score`; the rest is shared.

    Attributes:
        item_emb: ``nn.Embedding(n_items + 1, d)``; row 0 is padding (kept at zero, no gradient).
        pos_emb: learned right-aligned position embeddings (max_len, d) when ``cfg.positional``, else None.
        n_items: number of real items N (ids 1..N).
        cfg: the :class:`ModelConfig`.
        ce_chunk_rows: rows per chunk of the training CE (:func:`full_softmax_cross_entropy`; 0 = unchunked); a
            training setting (``train.ce_chunk_rows``), not part of the architecture or the checkpoint.
    """

    n_items: int
    cfg: ModelConfig
    ce_chunk_rows: int = DEFAULT_CHUNK_ROWS

    def __init__(self, n_items: int, cfg: ModelConfig) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.cfg = cfg
        self.n_items = n_items
        d = cfg.hidden_size
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, d) if cfg.positional else None
        self.emb_dropout = make_dropout(cfg.emb_dropout, cfg.dropout_masks)
        self.emb_ln = nn.LayerNorm(d)
        self.cam = nn.ModuleList(TransformerBlock(d, cfg.num_heads, cfg.dropout, cfg.dropout_masks)
                                 for _ in range(cfg.num_blocks))
        self._init_embeddings()

    # ------------------------------------------------------------------ helpers
    def _init_embeddings(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.item_emb.weight, std=EMB_INIT_STD)
            self.item_emb.weight[0].zero_()
            if self.pos_emb is not None:
                nn.init.normal_(self.pos_emb.weight, std=EMB_INIT_STD)

    @property
    def device(self) -> torch.device:
        """Device of the model parameters."""
        return self.item_emb.weight.device

    def _prepare(self, history: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Validate a left-padded batch, move it to the model device and keep the newest ``max_len`` columns.

        Raises:
            ValueError: not 2-D, or an id outside [0, n_items].
        """
        if history.dim() != 2:
            raise ValueError(f"history must have shape (B, L), got {tuple(history.shape)}")
        tensors = [t.to(self.device, torch.long) for t in (history, *others)]
        for t in tensors[1:]:
            if t.shape != history.shape:
                raise ValueError(f"targets shape {tuple(t.shape)} differs from history shape {tuple(history.shape)}")
        if history.shape[1] == 0:
            tensors = [torch.zeros(t.shape[0], 1, dtype=torch.long, device=self.device) for t in tensors]
        elif history.shape[1] > self.cfg.max_len:
            tensors = [t[:, -self.cfg.max_len :] for t in tensors]
        if tensors[0].numel():
            lo = min(int(t.min()) for t in tensors)
            hi = max(int(t.max()) for t in tensors)
            if lo < 0 or hi > self.n_items:
                raise ValueError(
                    f"item ids must be in [0, {self.n_items}] (0 = padding), got range [{lo}, {hi}]; "
                    "map unknown items to 0 or call grow_items() first"
                )
        return tuple(tensors)

    def _cam(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """CAM over a prepared history → (c (B, L, d) zero at padding, valid (B, L) bool, attention mask)."""
        valid = history != 0
        x = self.item_emb(history)
        if self.pos_emb is not None:
            length = history.shape[1]
            positions = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=history.device)
            x = x + self.pos_emb(positions)
        if self.cfg.input_order == "norm_dropout":
            x = self.emb_dropout(self.emb_ln(x))
        else:
            x = self.emb_ln(self.emb_dropout(x))
        mask = None if self.cfg.padding_keys == "visible" else attention_mask(valid)
        for block in self.cam:
            x = block(x, mask)
        return x * valid.unsqueeze(-1).to(x.dtype), valid, mask

    def _cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Full-softmax CE over the N real items (padding column excluded).

        Args:
            h: (M, d) output vectors at the M non-padding target positions (gathered beforehand, so logits are
               only computed where they count).
            targets: (M,) item ids in [1, N].

        Returns:
            scalar mean CE (0 with a gradient path when M = 0), computed in chunks of :attr:`ce_chunk_rows` rows.
        """
        if targets.numel() == 0:
            return h.sum() * 0.0
        return full_softmax_cross_entropy(h, self.item_emb.weight[1:], targets - 1, self.ce_chunk_rows)

    def _full_scores(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d) → (B, N+1) dot-product scores against the item table, column 0 = −inf."""
        scores = h @ self.item_emb.weight.t()
        scores[:, 0] = float("-inf")
        return scores

    # ------------------------------------------------------------------ public API
    @property
    def max_len(self) -> int:
        """Longest history the model reads (``cfg.max_len``); longer histories are cut to their newest items."""
        return self.cfg.max_len

    def loss(self, history: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss of a batch, for ONE backward pass (implemented by :class:`ADRec` and :class:`SASRec`).

        Args:
            history: (B, L) long, left-padded with 0 (newest ``max_len`` columns are used if longer).
            targets: (B, L) long, targets[b, i] = item after history[b, i], 0 where there is none.

        Returns:
            {"loss": scalar to backpropagate, "ce": scalar cross-entropy, "mse": scalar denoising error (0 for
            SASRec)}; "ce" and "mse" are detached.

        Raises:
            ValueError: not 2-D, shapes differ, or an id outside [0, n_items].
            NotImplementedError: called on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement loss(history, targets); use ADRec or SASRec")

    def score(
        self,
        history: torch.Tensor,
        *,
        steps: int | None = None,
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Next-item scores over the whole item table (implemented by :class:`ADRec` and :class:`SASRec`).

        Args:
            history: (B, L) long, left-padded with 0 (newest ``max_len`` columns are used if longer).
            steps: reverse diffusion steps (ADRec; None = the config's); ignored by SASRec.
            deterministic: None = the config's choice; True = no sampling noise (ADRec); ignored by SASRec.
            generator: RNG on the model's device for the sampling noise (ADRec); ignored by SASRec.
            use_cache: fast exact path (length groups, trimmed padding) when true.

        Returns:
            (B, N+1) float scores; column 0 (padding) is −inf, the others are finite.

        Raises:
            ValueError: not 2-D, an id outside [0, n_items], or (ADRec) ``steps`` outside [1, diffusion_steps].
            NotImplementedError: called on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score(history, ...); use ADRec or SASRec")

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """CAM (ADRec) / Transformer (SASRec) output.

        Args:
            history: (B, L) long, left-padded with 0; only the newest ``max_len`` columns are used.

        Returns:
            (B, L', d) float with L' = min(L, max_len); causal, key-padding masked, zero at padding positions.
        """
        (history,) = self._prepare(history)
        return self._cam(history)[0]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(history)

    def grow_items(self, n_items_new: int) -> None:
        """Enlarge the item table to ``n_items_new + 1`` rows (new rows ~ N(0, 0.02²), old rows kept).

        A no-op when ``n_items_new <= n_items``. The table becomes a new Parameter (same device, dtype and
        ``requires_grad``): rebuild the optimiser afterwards.
        """
        if n_items_new <= self.n_items:
            return
        old = self.item_emb.weight
        new = nn.Embedding(n_items_new + 1, old.shape[1], padding_idx=0, device=old.device, dtype=old.dtype)
        with torch.no_grad():
            nn.init.normal_(new.weight, std=EMB_INIT_STD)
            new.weight[: old.shape[0]].copy_(old)
            new.weight[0].zero_()
        new.weight.requires_grad_(old.requires_grad)
        self.item_emb = new
        self.n_items = n_items_new
