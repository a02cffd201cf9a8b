"""EDM core: preconditioning, training noise, loss weight, sampling schedules.

References:
- Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM), Table 1 and
  Eq. 2 (training loss), Eq. 5 (time steps), Eq. 7 (preconditioned denoiser), Eq. 8 (effective target).
- Blattmann et al. 2023, "Stable Video Diffusion" (SVD), Section 4 and App. D: EDM framework with v-prediction
  scalings and EDM's noise input, log-normal training noise, linearly increasing guidance across frames.

Notation follows the papers: ``sigma`` (noise level), ``P_mean``/``P_std`` (log-normal training noise),
``sigma_data`` (data standard deviation), ``c_skip``, ``c_out``, ``c_in``, ``c_noise`` (preconditioning),
``F`` (the raw network), ``D`` (the denoiser).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "EDMPreconditioning",
    "LogNormalSigma",
    "VPredictionPreconditioning",
    "append_dims",
    "edm_loss",
    "karras_sigmas",
    "linear_guidance",
    "loss_weight",
]


def append_dims(sigma: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-sample ``sigma`` of shape (B,) broadcasts over data of ``ndim``.

    A video sample (B, frames, C, H, W) has one sigma, so it is broadcast over frames and pixels alike.
    """
    if sigma.ndim > ndim:
        raise ValueError(f"sigma has {sigma.ndim} dims, more than the data's {ndim}")
    return sigma.reshape(*sigma.shape, *([1] * (ndim - sigma.ndim)))


class _Preconditioning:
    """Shared interface: ``scalings(sigma)`` and ``denoise(F, x, sigma, **cond)``.

    Karras et al. 2022, Eq. 7: D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)).
    """

    sigma_data: float

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def denoise(self, F: Callable[..., Tensor], x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, **cond)  (Karras et al. 2022, Eq. 7).

        ``sigma`` is either broadcastable to ``x`` or per-sample of shape (B,); a (B,) sigma is expanded for the
        c_skip/c_out/c_in products, while ``c_noise`` keeps sigma's given shape because networks such as
        diffusers' UNets take one timestep per sample.

        The skip path stays in (at least) fp32 whatever the network's precision, as Stability's
        ``generative-models`` keeps it: ``x``, ``sigma``, ``c_skip x`` and ``c_skip x + c_out F`` are fp32, F gets
        the fp32 ``c_in x`` and ``c_noise`` (it casts them to its network's dtype) and its output is taken back
        to fp32. At sigma = 0.002 the loss weight is 250 000, so a bf16 ``x`` (8 mantissa bits) alone would
        leave a loss of about 1 for a perfect network.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype)
        _, _, _, c_noise = self.scalings(sigma)
        c_skip, c_out, c_in, _ = self.scalings(append_dims(sigma, x.ndim))
        return c_skip * x + c_out * F(c_in * x, c_noise, **cond).to(device=x.device, dtype=dtype)


class EDMPreconditioning(_Preconditioning):
    """EDM preconditioning, Karras et al. 2022, Table 1 ("Network and preconditioning", column EDM):

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4
    """

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).sqrt()
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / norm
        c_in = 1.0 / norm
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def __repr__(self) -> str:
        return f"EDMPreconditioning(sigma_data={self.sigma_data})"


class VPredictionPreconditioning(_Preconditioning):
    """v-prediction scalings with EDM's noise input (SVD, Blattmann et al. 2023, App. D; released SVD configs):

    c_skip = 1 / (sigma^2 + 1)
    c_out  = -sigma / sqrt(sigma^2 + 1)
    c_in   = 1 / sqrt(sigma^2 + 1)
    c_noise = ln(sigma) / 4

    Equivalent to EDM with sigma_data = 1 except for the sign of c_out, so the network predicts
    v = alpha * n - sigma_vp * x0 with alpha = 1/sqrt(1+sigma^2), sigma_vp = sigma/sqrt(1+sigma^2)
    for x = x0 + sigma * n. The loss weight is therefore EDM's with sigma_data = 1.
    """

    sigma_data = 1.0

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        norm = (sigma**2 + 1.0).sqrt()
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / norm
        c_in = 1.0 / norm
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def __repr__(self) -> str:
        return "VPredictionPreconditioning()"


class LogNormalSigma:
    """Training noise distribution ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1, "Training").

    EDM's default is P_mean = -1.2, P_std = 1.2; SVD shifts it per stage (Blattmann et al. 2023, App. D), so
    both are constructor arguments rather than constants.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2):
        if P_std < 0:
            raise ValueError(f"P_std must be non-negative, got {P_std}")
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)

    def sample(
        self,
        shape: int | Sequence[int],
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """sigma = exp(P_mean + P_std * z), z ~ N(0, 1), of the given shape.

        Pass shape = (B,) for one sigma per sample; for video that is one sigma per video, which
        ``append_dims`` / ``denoise`` broadcast over frames.
        """
        if isinstance(shape, int):
            shape = (shape,)
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return (self.P_mean + self.P_std * z).exp()

    def __repr__(self) -> str:
        return f"LogNormalSigma(P_mean={self.P_mean}, P_std={self.P_std})"


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2  (Karras et al. 2022, Table 1).

    It equals 1 / c_out(sigma)^2, so the effective target of F has unit weight at every sigma (Eq. 8). With
    sigma_data = 1 it is (1 + sigma^2) / sigma^2 as used by SVD (Blattmann et al. 2023, App. D).
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoiser_output: Tensor, x0: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """Per-sample weighted MSE: lambda(sigma) * mean ||D(x; sigma) - x0||^2  (Karras et al. 2022, Eq. 2 and 8).

    ``sigma`` is per-sample, shape (B,) or broadcastable to ``x0``. Returns shape (B,); the caller averages, so
    that per-sigma-bin statistics (``training.sigma_bins``) can be formed from the same values.
    """
    if denoiser_output.shape != x0.shape:
        raise ValueError(f"shape mismatch: {tuple(denoiser_output.shape)} vs {tuple(x0.shape)}")
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    w = loss_weight(append_dims(sigma, x0.ndim), sigma_data)
    per_element = w * (denoiser_output - x0) ** 2
    return per_element.reshape(x0.shape[0], -1).mean(dim=1)


def karras_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Karras et al. 2022, Eq. 5 (Table 1, "Sampling", time steps), with sigma_N = 0 appended:

    sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0..n-1.

    Returns n + 1 values, decreasing from sigma_max to sigma_min, then 0. SVD samples with sigma_max = 700.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    # Compute in float64: sigma_max^(1/rho) differences are small and rho-th powers amplify rounding.
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)


def linear_guidance(
    num_frames: int, min_scale: float = 1.0, max_scale: float = 2.5, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Per-frame classifier-free guidance scale rising linearly from the first to the last frame.

    SVD sampling (Blattmann et al. 2023, Section 4 / released config): w_f = min_scale + f/(F-1) (max - min).
    Returns shape (num_frames,); reshape to (1, F, 1, 1, 1) to broadcast over (B, F, C, H, W).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return torch.linspace(min_scale, max_scale, num_frames, dtype=dtype)
