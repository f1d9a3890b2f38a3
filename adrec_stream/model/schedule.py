"""Noise schedules and DDPM forward / reverse coefficients (DDPM, Ho et al. 2020, as used by ADRec).

All three schedules return T betas (float64 numpy-free torch tensors):

* ``trunc_lin`` (reference default): linear from ``1e-4·(1000/T) + 0.01`` to ``0.02·(1000/T) + 0.01``;
  for T = 32 that is 0.013125 → 0.635.
* ``linear``: the standard DDPM schedule 1e-4 → 0.02 for T = 1000, rescaled by 1000/T
  (for T = 32: 0.003125 → 0.625).
* ``cosine``: Nichol & Dhariwal (2021), ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T)+s)/(1+s)·π/2), s = 0.008,
  β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999).

The linear schedules scale with 1000/T and would exceed 1 for T < 20; every beta is clipped to 0.999.

Sampling with fewer steps than T uses the strided timestep subset of :func:`sampling_timesteps` and the exact
DDPM posterior between two non-adjacent timesteps (see :meth:`NoiseSchedule.reverse_coefficients`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: upper clip of every beta: the linear schedules exceed 1 for small T (trunc_lin: T < 20, linear: T < 20)
MAX_BETA = 0.999


def make_betas(name: str, steps: int) -> torch.Tensor:
    """Beta schedule ``β_0 … β_{T-1}``.

    Args:
        name: "trunc_lin", "linear" or "cosine".
        steps: T >= 1.

    Returns:
        float64 tensor of shape (T,), every value in (0, 1).

    Raises:
        ValueError: unknown schedule name or T < 1.
    """
    if steps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {steps}")
    scale = 1000.0 / steps
    if name == "trunc_lin":
        return torch.linspace(scale * 1e-4 + 0.01, scale * 0.02 + 0.01, steps, dtype=torch.float64).clamp_(max=MAX_BETA)
    if name == "linear":
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64).clamp_(max=MAX_BETA)
    if name == "cosine":
        s = 0.008

        def f(t: float) -> float:
            return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1.0 - f(i + 1) / f(i), MAX_BETA) for i in range(steps)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {name!r}; use 'trunc_lin', 'linear' or 'cosine'")


def sampling_timesteps(total: int, steps: int | None) -> list[int]:
    """Descending timesteps visited by the reverse process.

    ``steps`` None or equal to T gives ``[T-1, …, 0]``. Fewer steps give the strided subset
    ``floor(linspace(T-1, 0, steps))``: it always starts at T-1, ends at 0 (for steps >= 2) and has no duplicates
    (the stride is >= 1). ``steps == 1`` gives ``[T-1]`` (one-shot x0 prediction from pure noise).

    Raises:
        ValueError: steps outside [1, T].
    """
    if steps is None:
        steps = total
    if not 1 <= steps <= total:
        raise ValueError(f"sampling steps must be in [1, {total}] (the diffusion_steps T), got {steps}")
    if steps == 1:
        return [total - 1]
    stride = (total - 1) / (steps - 1)
    return [math.floor(total - 1 - i * stride + 1e-9) for i in range(steps)]


class NoiseSchedule(nn.Module):
    """Precomputed DDPM quantities as (non-persistent) float32 buffers that follow the module's device.

    Buffers (shape (T,)): ``betas``, ``alphas_cumprod`` (ᾱ_t), ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``.
    """

    def __init__(self, name: str, steps: int) -> None:
        super().__init__()
        betas = make_betas(name, steps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.steps = steps
        self.name = name
        self._alphas_cumprod64 = alphas_cumprod  # exact values for reverse coefficients (Python side)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt().float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε.

        Args:
            x0: (..., d) clean embeddings.
            t: (...) integer timesteps in [0, T).
            noise: (..., d) standard Gaussian noise ε.

        Returns:
            (..., d) noised embeddings x_t.
        """
        a = self.sqrt_alphas_cumprod[t].unsqueeze(-1).to(x0.dtype)
        b = self.sqrt_one_minus_alphas_cumprod[t].unsqueeze(-1).to(x0.dtype)
        return a * x0 + b * noise

    def reverse_coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """Coefficients of the DDPM posterior q(x_s | x_t, x0) for s < t (s = −1 means "x0 itself", ᾱ_{−1} = 1).

        With α_{t|s} = ᾱ_t/ᾱ_s and β_{t|s} = 1 − α_{t|s}: mean = sqrt(ᾱ_s)·β_{t|s}/(1−ᾱ_t)·x0 +
        sqrt(α_{t|s})·(1−ᾱ_s)/(1−ᾱ_t)·x_t, and the added noise has standard deviation sqrt(β_{t|s}) (which is
        sqrt(β_t) for s = t−1, as in the reference code) and 0 for s = −1.

        Returns:
            (coef_x0, coef_xt, noise_std) as Python floats.
        """
        if not -1 <= s < t < self.steps:
            raise ValueError(f"need -1 <= s < t < T={self.steps}, got t={t}, s={s}")
        ab = self._alphas_cumprod64
        ab_t = float(ab[t])
        ab_s = 1.0 if s < 0 else float(ab[s])
        a_ts = ab_t / ab_s
        b_ts = 1.0 - a_ts
        coef_x0 = math.sqrt(ab_s) * b_ts / (1.0 - ab_t)
        coef_xt = math.sqrt(a_ts) * (1.0 - ab_s) / (1.0 - ab_t)
        noise_std = math.sqrt(b_ts) if s >= 0 else 0.0
        return coef_x0, coef_xt, noise_std
