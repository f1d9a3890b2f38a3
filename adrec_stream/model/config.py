"""Model hyper-parameters (the ``model:`` section of an experiment YAML).

Defaults follow the ADRec paper and its reference configuration (Chen, Xu, Jiang, KDD 2025, and
the configuration of its public reference code): d = 128, L = 50, 4 heads, 2 blocks, dropout 0.1 inside
blocks and 0.3 on the input embeddings, T = 32 diffusion steps with the "trunc_lin" noise schedule,
λ = 0.001, "att" denoiser and no positional embeddings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from adrec_stream.config import StrictModel
from adrec_stream.model.layers import MAX_RANDOM_BITS_P


class ModelConfig(StrictModel):
    """Hyper-parameters of :class:`~adrec_stream.model.adrec.ADRec` and :class:`~adrec_stream.model.sasrec.SASRec`.

    Float fields also accept YAML integers (pydantic's strict mode converts int -> float).

    Attributes:
        kind: "adrec" (diffusion model) or "sasrec" (causal Transformer with full-softmax CE; SASRec+ when
            ``positional`` is true, stage-1 embedding pre-training when false).
        hidden_size: embedding / model width d.
        max_len: history window L (histories are left-padded with item 0 to at most this length).
        num_heads: attention heads (must divide ``hidden_size``).
        num_blocks: Transformer blocks in the CAM (and in the "att" denoiser, or FFN blocks of the "mlp" one).
        dropout: dropout inside blocks (attention probabilities, residual branches, FFN).
        emb_dropout: dropout on the input item embeddings (before or after the input LayerNorm, see
            ``input_order``).
        input_order: order of the input layer over ``E[history] (+ positions)``: "dropout_norm" (default) =
            ``LN(Dropout(x))``, as the reference code's ADRec; "norm_dropout" = ``Dropout(LN(x))``, as the
            reference code's SASRec (its SASRec+ baseline and its stage-1 pretraining model), which feeds the
            blocks an unnormalised, dropout-noised residual stream.
        denoiser: "att" (causal Transformer over all positions) or "mlp" (per-token MLP).
        diffusion_steps: T, the number of diffusion steps.
        schedule: beta schedule, see :mod:`adrec_stream.model.schedule`.
        lambda_uncertainty: λ, weight of ``x_t + time_emb(t)`` added to the condition in the ADM input.
        positional: add learned position embeddings (right-aligned: the newest item always has position L-1).
        sampling_steps: number of reverse steps at inference (None = T; fewer = strided subset of timesteps).
        deterministic_sampling: start the reverse process from zeros and add no noise (reproducible scores).
        init_std: None (default) = item/position embeddings ~ N(0, 0.02²) and PyTorch's default Linear
            initialisation; a value σ in (0, 1] = every Linear and Embedding weight ~ N(0, σ²) and Linear biases 0
            (the reference code's pretraining SASRec uses σ = 0.1). The padding row is zero either way.
        dropout_masks: how training-time dropout draws its masks: "bernoulli" (default) = :class:`torch.nn.Dropout`'s
            per-element Bernoulli draws (the reference code's; every results row but ml-100k ADRec used it),
            "random_bits" = 16 random bits per element (:func:`~adrec_stream.model.layers.random_bits_dropout`: p to
            within 2^-17; a CPU training step takes 0.72-0.86x the time, ``scripts/bench_dropout_masks.py``; a
            different random stream, so a seed trains different weights). No effect at inference.
        padding_keys: "masked" (default) = real positions never attend to padding (outputs independent of the
            amount of left padding; exact padding trimming and prefix caching). "visible" (SASRec only) = the
            reference code's mask, which hides padding *queries* but not padding keys: every history is
            left-padded to ``max_len`` and real positions also attend to the padding positions, whose input is
            the input layer over the position embedding alone (the item row 0 is zero). The padding then tells
            the model how long the history is. Costs full-length (untrimmed) batches.
    """

    kind: Literal["adrec", "sasrec"] = "adrec"
    hidden_size: int = 128
    max_len: int = 50
    num_heads: int = 4
    num_blocks: int = 2
    dropout: float = 0.1
    emb_dropout: float = 0.3
    input_order: Literal["dropout_norm", "norm_dropout"] = "dropout_norm"
    denoiser: Literal["att", "mlp"] = "att"
    diffusion_steps: int = 32
    schedule: Literal["trunc_lin", "linear", "cosine"] = "trunc_lin"
    lambda_uncertainty: float = 0.001
    positional: bool = False
    sampling_steps: int | None = None
    deterministic_sampling: bool = False
    init_std: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    padding_keys: Literal["masked", "visible"] = "masked"
    dropout_masks: Literal["bernoulli", "random_bits"] = "bernoulli"

    @model_validator(mode="after")
    def _check_ranges(self) -> ModelConfig:
        problems = []
        if self.hidden_size < 2 or self.hidden_size % 2:
            problems.append(f"hidden_size must be an even integer >= 2 (got {self.hidden_size})")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            problems.append(f"num_heads must be >= 1 and divide hidden_size={self.hidden_size} (got {self.num_heads})")
        if self.max_len < 1:
            problems.append(f"max_len must be >= 1 (got {self.max_len})")
        if self.num_blocks < 1:
            problems.append(f"num_blocks must be >= 1 (got {self.num_blocks})")
        for name in ("dropout", "emb_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1) (got {value})")
        if self.diffusion_steps < 1:
            problems.append(f"diffusion_steps must be >= 1 (got {self.diffusion_steps})")
        if self.sampling_steps is not None and not 1 <= self.sampling_steps <= self.diffusion_steps:
            problems.append(
                f"sampling_steps must be in [1, diffusion_steps={self.diffusion_steps}] or null "
                f"(got {self.sampling_steps})"
            )
        if self.lambda_uncertainty < 0:
            problems.append(f"lambda_uncertainty must be >= 0 (got {self.lambda_uncertainty})")
        if self.dropout_masks == "random_bits":
            for name in ("dropout", "emb_dropout"):
                if getattr(self, name) > MAX_RANDOM_BITS_P:
                    problems.append(f"{name} must be at most {MAX_RANDOM_BITS_P} with dropout_masks 'random_bits' "
                                    f"(16-bit masks; got {getattr(self, name)})")
        if self.padding_keys == "visible" and self.kind != "sasrec":
            problems.append("padding_keys 'visible' is only available for kind 'sasrec' (ADRec's cached scoring "
                            "relies on masked padding keys)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
