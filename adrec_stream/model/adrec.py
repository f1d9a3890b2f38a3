"""ADRec: causal attention module (CAM) + autoregressive diffusion module (ADM) with token-level independent
diffusion (Chen, Xu, Jiang, KDD 2025, arXiv 2505.19544; section "Method").

Training (token-level independent diffusion and the joint CE + MSE objective): every non-padding target token gets
its own timestep t ~ U{0..T−1}; the denoiser sees ``c + λ·(x_t + time_mlp(sinusoidal(t·1000/T)))`` and predicts x0
at every position; loss = 0.5·(CE + MSE) as one scalar (the reference's PCGrad without conflict projection equals
one backward of this mean).

Inference (the paper's sampling procedure): CAM once; the last position starts from N(0, I) (zeros in deterministic
mode); for each reverse timestep the history positions stay at their clean next-item embeddings with t = 0, the
denoiser predicts x0 at the last position and x moves to the DDPM posterior mean plus sqrt(β)·ε (no noise on the
final step and none in deterministic mode). Scores = final vector · Eᵀ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import adrec_stream.model.denoiser as denoiser_module
from adrec_stream.model.base import SequenceModel, length_groups, trim_left_padding
from adrec_stream.model.config import ModelConfig
from adrec_stream.model.denoiser import PrefixCache, build_denoiser, merge_group_caches
from adrec_stream.model.layers import TimeEmbedding, sinusoidal_embedding
from adrec_stream.model.schedule import NoiseSchedule, sampling_timesteps


class ADRec(SequenceModel):
    """ADRec next-item model (x0-prediction diffusion over item embeddings).

    Attributes (besides those of :class:`SequenceModel`):
        schedule: :class:`NoiseSchedule` (T betas, ᾱ).
        time_emb: :class:`TimeEmbedding` (d → 4d → d, SiLU).
        denoiser: "att" or "mlp" denoiser.
    """

    def __init__(self, n_items: int, cfg: ModelConfig) -> None:
        super().__init__(n_items, cfg)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.diffusion_steps)
        self.time_emb = TimeEmbedding(cfg.hidden_size, cfg.diffusion_steps)
        self.denoiser = build_denoiser(cfg)

    def _denoiser_input(self, c: torch.Tensor, x_t: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """ADM input ``c + λ·(x_t + time_emb(t))``; all (…, d)."""
        return c + self.cfg.lambda_uncertainty * (x_t + t_emb)

    def sample_timesteps(self, targets: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Token-level independent timesteps: (B, L) long, t ~ U{0..T−1} per non-padding target, 0 at padding."""
        t = torch.randint(
            0, self.cfg.diffusion_steps, targets.shape, generator=generator, device=targets.device
        )
        return t * (targets != 0)

    def loss_terms(
        self,
        history: torch.Tensor,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        gather_valid: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two training objectives, not detached (for :meth:`loss`, or for separate backward passes).

        Args:
            history, targets: as in :meth:`loss`.
            generator: optional RNG for timesteps and noise.
            gather_valid: True: logits only at non-padding target positions (rows gathered first).
                False: logits at all B·L positions with padding ignored, as the reference computes them
                (same value, used by the reference-equivalent benchmark).

        Returns:
            (ce, mse) scalars, see :meth:`loss`.
        """
        history, targets = self._prepare(history, targets)
        c, valid, mask = self._cam(history)
        keep = targets != 0
        t = self.sample_timesteps(targets, generator)
        x0 = self.item_emb(targets)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = torch.where(keep.unsqueeze(-1), self.schedule.q_sample(x0, t, noise), x0)
        x0_pred = self.denoiser(self._denoiser_input(c, x_t, self.time_emb(t)), mask)

        if gather_valid:
            ce = self._cross_entropy(x0_pred[keep], targets[keep])
        else:
            logits = x0_pred @ self.item_emb.weight.t()
            logits[..., 0] = float("-inf")
            ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
        per_pos = (x0_pred - x0).pow(2).mean(dim=-1) * keep
        counts = keep.sum(dim=1)
        has = counts > 0
        if bool(has.any()):
            mse = (per_pos.sum(dim=1)[has] / counts[has]).mean()
        else:
            mse = x0_pred.sum() * 0.0
        return ce, mse

    def loss(
        self, history: torch.Tensor, targets: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Joint training loss 0.5·(CE + MSE), one scalar for one backward pass.

        Args:
            history: (B, L) long, left-padded with 0 (newest max_len columns are used if longer).
            targets: (B, L) long, targets[b, i] = item after history[b, i], 0 where history is padding.
            generator: optional RNG for timesteps and noise (reproducible losses).

        Returns:
            {"loss": 0.5·(ce + mse) (backpropagate this), "ce": full-softmax CE of x0_pred·Eᵀ over non-padding
            positions (padding column excluded from the softmax), "mse": squared error of x0_pred vs E[target],
            averaged over d, then over each sequence's valid positions, then over sequences with >= 1 valid
            position}. "ce" and "mse" are detached.
        """
        ce, mse = self.loss_terms(history, targets, generator=generator)
        return {"loss": 0.5 * (ce + mse), "ce": ce.detach(), "mse": mse.detach()}

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
        """Next-item scores by full ranking after the reverse diffusion of the last token.

        Args:
            history: (B, L) long, left-padded with 0 (newest max_len columns are used if longer).
            steps: reverse steps (None → cfg.sampling_steps → T). Fewer than T visit the strided subset
                ``floor(linspace(T−1, 0, steps))`` and use the exact DDPM posterior between consecutive visited
                timesteps (see :meth:`NoiseSchedule.reverse_coefficients`).
            deterministic: None → cfg.deterministic_sampling. True: start from x = 0 (the prior mean) and add no
                noise, so scores depend on the history only.
            generator: RNG (on the model's device) for the initial and per-step noise, drawn as one (steps, B, d)
                tensor in history-length order on both paths, so equal seeds give equal scores with and without
                the cache (a row's draws follow its rank in the batch's length order).
            use_cache: True (fast path): CAM and the denoiser's history prefix run once per length group, trimmed
                (key/value cache for "att"; nothing for "mlp"), then only the last token per step.
                False (reference path, as the reference code does it): at every step rebuild the denoiser input
                of the whole sequence (time MLP evaluated at every position) and re-run the whole denoiser.

        Returns:
            (B, N+1) float scores, column 0 (padding) = −inf, finite elsewhere (also for all-padding histories).
        """
        (history,) = self._prepare(history)
        det = self.cfg.deterministic_sampling if deterministic is None else deterministic
        steps = steps if steps is not None else self.cfg.sampling_steps
        timesteps = sampling_timesteps(self.cfg.diffusion_steps, steps)
        b, d = history.shape[0], self.cfg.hidden_size
        if b == 0:
            return self._full_scores(self.item_emb.weight.new_zeros(0, d))
        t_table = self.time_emb.table(self.device)  # (T, d)
        # Rows are processed in length order (see length_groups); the Gaussian draws are made in that order,
        # all at once, step-major (steps, B, d): x_T, then one per step except the last. Both paths use the same
        # draws for the same user, so equal seeds give equal scores with and without the cache.
        order, groups = length_groups(history)
        noise = None if det else torch.randn((len(timesteps), b, d), generator=generator, device=self.device)

        if use_cache:
            c_last, caches = self._prefix_state(history[order], groups, t_table[0])
        else:
            c, valid, mask = self._cam(history)
            x_prefix = self._clean_prefix(history, valid)
            t_full = torch.zeros(history.shape, dtype=torch.long, device=self.device)
            if noise is not None:  # the caller's row order: row order[j] gets the draws of sorted row j
                noise = torch.empty_like(noise).index_copy_(1, order, noise)
        x = history.new_zeros(b, d, dtype=t_table.dtype) if noise is None else noise[0]

        for i, t in enumerate(timesteps):
            if use_cache:
                x0_pred = self.denoiser.step(self._denoiser_input(c_last, x, t_table[t]), caches)
            else:
                x_full = torch.cat([x_prefix, x.unsqueeze(1)], dim=1)
                t_full[:, -1] = t
                t_emb = self.time_emb.mlp(sinusoidal_embedding(t_full.float() * self.time_emb.scale, d))
                x0_pred = self.denoiser(self._denoiser_input(c, x_full, t_emb), mask)[:, -1].contiguous()
            s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            coef_x0, coef_xt, noise_std = self.schedule.reverse_coefficients(t, s)
            x = x0_pred.mul_(coef_x0).add_(x, alpha=coef_xt)  # DDPM posterior mean (x0_pred is a fresh tensor)
            if noise is not None and noise_std > 0:
                x.add_(noise[i + 1], alpha=noise_std)
        if use_cache:
            x = torch.empty_like(x).index_copy_(0, order, x)  # back to the caller's row order
        return self._full_scores(x)

    def _clean_prefix(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Clean x at the L−1 history positions: embedding of the known next item, 0 where history is padding."""
        return self.item_emb(history[:, 1:]) * valid[:, :-1].unsqueeze(-1).to(self.item_emb.weight.dtype)

    def _prefix_state(
        self, history: torch.Tensor, groups: list[slice], t0_emb: torch.Tensor
    ) -> tuple[torch.Tensor, PrefixCache]:
        """Everything the reverse steps need from the history, computed once per length group.

        Each group of rows (contiguous in the length-sorted batch, see :func:`length_groups`) is trimmed to its own
        longest history, so short histories neither compute nor read the padding of long ones. Exact, because
        padding keys get zero attention weight.

        Args:
            history: (B, L) length-sorted, left-padded histories.
            groups: row slices of ``history``.
            t0_emb: (d,) time embedding of t = 0 (history positions are clean).

        Returns:
            c_last (B, d) CAM output at the last position, and the per-group denoiser caches (None for "mlp").
        """
        c_parts, caches = [], []
        for rows in groups:
            (group,) = trim_left_padding(history[rows])
            c, valid, _ = self._cam(group)
            valid_prefix = valid[:, :-1]
            h_prefix = self._denoiser_input(c[:, :-1], self._clean_prefix(group, valid), t0_emb)
            c_parts.append(c[:, -1])
            caches.append((rows, self.denoiser.prefix_cache(h_prefix, valid_prefix)))
        c_last = torch.cat(c_parts, dim=0)
        if caches[0][1] is None:
            return c_last, None
        return c_last, merge_group_caches(caches, denoiser_module.MIN_STEP_GROUP_ROWS)
