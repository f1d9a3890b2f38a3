"""SASRec with full-softmax cross-entropy (Kang & McAuley 2018; "SASRec+" of Klenitskiy & Vasilev 2023).

Used twice in this project: for ADRec's stage-1 embedding pre-training (``positional=False``, first of ADRec's
three training stages) and as the SASRec+ baseline (``positional=True``). Same post-LN block type and masks as
ADRec's CAM.
"""

from __future__ import annotations

import torch

from adrec_stream.model.base import SequenceModel, length_groups, trim_left_padding


class SASRec(SequenceModel):
    """Causal Transformer next-item model; the hidden state at position i predicts the item after history[i]."""

    def loss(self, history: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-softmax next-item CE at every non-padding position.

        Args:
            history: (B, L) long, left-padded with 0, L <= max_len (longer: newest max_len columns are used).
            targets: (B, L) long, targets[b, i] = item after history[b, i], 0 where there is none.

        Returns:
            {"loss": CE, "ce": CE, "mse": 0}; scalars, "loss" is the one to backpropagate.
        """
        history, targets = self._pad_visible(*self._prepare(history, targets))
        h, _, _ = self._cam(history)
        keep = targets != 0
        ce = self._cross_entropy(h[keep], targets[keep])
        return {"loss": ce, "ce": ce.detach(), "mse": torch.zeros((), device=ce.device)}

    def _pad_visible(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """With ``padding_keys: visible``, left-pad (B, L) tensors with zeros to ``max_len`` columns (the reference
        code's fixed-length input, whose padding positions real positions attend to); unchanged otherwise."""
        missing = self.cfg.max_len - tensors[0].shape[1]
        if self.cfg.padding_keys != "visible" or missing <= 0:
            return tensors
        return tuple(torch.nn.functional.pad(t, (missing, 0)) for t in tensors)

    @torch.no_grad()
    def score(
        self,
        history: torch.Tensor,
        *,
        steps: int | None = None,
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Next-item scores by full ranking: last hidden state · Eᵀ.

        Args:
            history: (B, L) long, left-padded with 0.
            steps, deterministic, generator: accepted for interface compatibility with ADRec; unused.
            use_cache: when true, rows are grouped by history length and each group is trimmed (exact, faster);
                ignored with ``padding_keys: visible`` (every row is scored at full ``max_len``).

        Returns:
            (B, N+1) float scores, column 0 (padding) = −inf; finite elsewhere, even for all-padding histories.
        """
        (history,) = self._prepare(history)
        if self.cfg.padding_keys == "visible":  # outputs depend on the padding: always full max_len, no trimming
            (history,) = self._pad_visible(history)
            return self._full_scores(self._cam(history)[0][:, -1])
        if not use_cache:
            return self._full_scores(self._cam(history)[0][:, -1])
        order, groups = length_groups(history)
        ordered = history[order]
        last = self.item_emb.weight.new_zeros(history.shape[0], self.cfg.hidden_size)
        for rows in groups:
            (group,) = trim_left_padding(ordered[rows])
            last[order[rows]] = self._cam(group)[0][:, -1]
        return self._full_scores(last)
