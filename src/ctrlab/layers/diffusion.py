"""DDPM pieces for DiffuMIN's interest generator (DMIG): the noise schedule with x₀-prediction
posterior steps, the sinusoidal time embedding, and a small conditional transformer denoiser over the
K interest-channel tokens."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .mlp import init_linear
from .transformer import TransformerBlock


class DiffusionSchedule(nn.Module):
    """Linear DDPM schedule, steps ``t = 1 … T``: ``β_t`` from ``beta_start`` to ``beta_end``,
    ``α_t = 1 − β_t``, ``ᾱ_t = Π_{s≤t} α_s`` (``ᾱ_0 = 1``).

    * forward noising ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` (:meth:`q_sample`);
    * reverse step with an x₀-prediction ``x̂_0`` (:meth:`posterior_step`), the mean and variance of
      ``q(x_{t−1} | x_t, x_0 = x̂_0)``::

          μ = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
          σ² = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)

      (at t = 1: μ = x̂_0, σ = 0);
    * :meth:`generate` (DiffuMIN's "efficient sampling"): noise the clean ``x_0`` to step ``steps``
      and run the reverse steps ``steps → 0``; ``stochastic=False`` (evaluation) uses ε = 0 and the
      posterior means, so generation is deterministic.
    Coefficients are float64-computed buffers of length T + 1, indexed by t (not saved in a state dict).
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if num_steps < 1 or not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"diffusion schedule needs num_steps >= 1 and 0 < beta_start <= beta_end < 1, got "
                             f"num_steps={num_steps}, beta_start={beta_start}, beta_end={beta_end}")
        self.num_steps = int(num_steps)
        beta = torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)])
        alpha_bar = torch.cumprod(1 - beta, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        denom = (1 - alpha_bar).clamp(min=1e-300)
        coefs = {"beta": beta, "alpha_bar": alpha_bar, "sqrt_alpha_bar": alpha_bar.sqrt(),
                 "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
                 "coef_x0": prev.sqrt() * beta / denom, "coef_xt": (1 - beta).sqrt() * (1 - prev) / denom,
                 "posterior_std": (beta * (1 - prev) / denom).sqrt()}
        coefs["coef_x0"][0], coefs["coef_xt"][0] = 1.0, 0.0  # t = 0: nothing left to remove
        for name, value in coefs.items():
            self.register_buffer(name, value.float(), persistent=False)

    def _at(self, name: str, t, like: torch.Tensor) -> torch.Tensor:
        """Coefficient at step(s) ``t`` (int, or a long tensor of ``like``'s leading shape), broadcast to ``like``."""
        c = getattr(self, name)[t]
        return c.view(*c.shape, *([1] * (like.dim() - c.dim()))).to(like.dtype) if torch.is_tensor(t) else c.to(like.dtype)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` (ε = 0 when ``noise`` is None)."""
        x = self._at("sqrt_alpha_bar", t, x0) * x0
        return x if noise is None else x + self._at("sqrt_one_minus_alpha_bar", t, x0) * noise

    def posterior_step(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x_{t−1} = μ(x_t, x̂_0) + σ_t ε`` (ε = 0 when ``noise`` is None: the posterior mean)."""
        x = self._at("coef_x0", t, x_t) * x0_hat + self._at("coef_xt", t, x_t) * x_t
        return x if noise is None else x + self._at("posterior_std", t, x_t) * noise

    def generate(self, x0: torch.Tensor, predict_x0, steps: int, stochastic: bool = False) -> torch.Tensor:
        """Noise ``x0`` to step ``steps`` and denoise back to 0 with ``predict_x0(x_t, t (int)) → x̂_0``."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"generation steps must be in [1, {self.num_steps}], got {steps}")
        x = self.q_sample(x0, steps, torch.randn_like(x0) if stochastic else None)
        for t in range(steps, 0, -1):
            x = self.posterior_step(x, predict_x0(x, t), t, torch.randn_like(x) if stochastic and t > 1 else None)
        return x


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(N,)`` steps → ``(N, dim)``: ``[sin(t ω_i), cos(t ω_i)]`` with ``ω_i = max_period^(−i/h)``,
    ``h = dim // 2`` (a zero column appended when dim is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = t.float().unsqueeze(-1) * freqs
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class TimeEmbedding(nn.Module):
    """``emb(t) = W_2 SiLU(W_1 sinusoid(t))``, ``(N,) → (N, dim)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.net = nn.Sequential(init_linear(nn.Linear(dim, dim)), nn.SiLU(), init_linear(nn.Linear(dim, dim)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoidal_embedding(t, self.dim))


class InterestDenoiser(nn.Module):
    """x₀-predictor over the K channel tokens: for each channel k, the tokens are the clean interests
    ``r̄_j`` with token k replaced by its noisy ``x_t``; ``+ emb(t)`` on every token; ``n_layers``
    :class:`TransformerBlock` s (self-attention over the K tokens → Add & LN → cross-attention to the
    K channel directions ``q̂`` → Add & LN → FFN (ReLU, ``dff·d``) → Add & LN); output token k:
    ``x̂_0 = x_t + W_out z_k`` (a skip connection around the blocks, ``W_out`` zero-initialised, so an
    untrained denoiser predicts ``x̂_0 = x_t`` and generation starts near the identity instead of a
    random map: on the planted task a random start fed the CTR MLP noise and stalled training).
    All K channels are denoised in one batched pass of ``B·K`` token sets."""

    def __init__(self, dim: int, num_channels: int, n_layers: int = 2, num_heads: int = 2, dff: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"the denoiser needs n_layers >= 1, got {n_layers}")
        self.num_channels = int(num_channels)
        self.time = TimeEmbedding(dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, dff, cross=True) for _ in range(n_layers))
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("eye", torch.eye(num_channels, dtype=torch.bool)[None, :, :, None], persistent=False)

    def forward(self, clean: torch.Tensor, noisy: torch.Tensor, t, condition: torch.Tensor) -> torch.Tensor:
        """``clean``, ``noisy``, ``condition`` (B, K, d); ``t``: int or (B, K) long → x̂_0 (B, K, d)."""
        B, K, d = clean.shape
        tokens = torch.where(self.eye, noisy.unsqueeze(2), clean.unsqueeze(1)).reshape(B * K, K, d)
        t = torch.full((B * K,), t, dtype=torch.long, device=clean.device) if not torch.is_tensor(t) else t.reshape(B * K)
        x = tokens + self.time(t).unsqueeze(1)
        cond = condition.unsqueeze(1).expand(B, K, K, d).reshape(B * K, K, d)
        for block in self.blocks:
            x = block(x, condition=cond)
        return noisy + (self.out(x).view(B, K, K, d) * self.eye).sum(dim=2)  # token k of copy k
