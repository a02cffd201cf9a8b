"""EDM sampling of the image-to-video model with SVD's frame-wise classifier-free guidance.

References:
- Karras et al. 2022 (EDM), Algorithm 1 (deterministic sampler: Euler step plus optional 2nd-order Heun
  correction), Eq. 5 (Karras time steps, ``training.edm.karras_sigmas``).
- Blattmann et al. 2023 (SVD), Section 4 / released sampling config: Euler, sigma_max = 700, guidance rising
  linearly from ``min_guidance`` on the first frame to ``max_guidance`` on the last.
- diffusers' ``StableVideoDiffusionPipeline``: the unconditional branch sees zeros for both the conditioning
  latent and the CLIP image embedding; frames are decoded with ``vae.decode(z / scaling_factor, num_frames)``.

``edm_sample`` is the sampler on any denoiser ``D(x, sigma)``; ``guided_video_denoiser`` and
``guided_text_denoiser`` build that denoiser from an image-to-video or a text-to-video UNet; ``sample_video``,
``sample_text_video`` and ``sample_images`` (Stage I) tie them together.

The sampler's state ``x`` and ``D`` are fp32 on the network's device whatever the network's dtype (the EDM skip
path, ``training.edm``); conditions given as CPU fp32 tensors are moved where the network is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from training.conditioning import added_time_ids, image_F, text_video_F, video_F
from training.device import model_device_dtype, to_model
from training.edm import VPredictionPreconditioning, karras_sigmas, linear_guidance

__all__ = [
    "decode_latents",
    "edm_sample",
    "guided_text_denoiser",
    "guided_video_denoiser",
    "sample_images",
    "sample_text_video",
    "sample_video",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]  # D(x, sigma) with sigma of shape (B,)


@torch.no_grad()
def edm_sample(
    D: Denoiser,
    shape: tuple[int, ...],
    sigmas: Tensor,
    *,
    heun: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Karras et al. 2022, Algorithm 1 with S_churn = 0 (deterministic), from x_0 = sigmas[0] * n, n ~ N(0, I).

    ``sigmas`` is decreasing and ends with 0 (as ``karras_sigmas`` returns). Each step is the Euler step
    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i with d_i = (x_i - D(x_i; sigma_i)) / sigma_i; with ``heun`` the
    step is corrected by the slope at x_{i+1} (skipped on the last step to sigma = 0, as in Algorithm 1).
    The initial noise is drawn on the generator's device, so a seeded CPU generator gives the same samples on
    any ``device``.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be 1-D with at least two values (the last one 0)")
    noise_device = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32)
    x = (x * float(sigmas[0])).to(device=device, dtype=dtype)
    batch = shape[0]

    def slope(x: Tensor, s: float) -> Tensor:
        return (x - D(x, torch.full((batch,), s, device=x.device, dtype=x.dtype))) / s

    for i in range(sigmas.numel() - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = slope(x, s)
        x_next = x + (s_next - s) * d
        if heun and s_next > 0:
            x_next = x + (s_next - s) * 0.5 * (d + slope(x_next, s_next))
        x = x_next
    return x


def guided_video_denoiser(
    unet: Callable[..., object],
    z_cond: Tensor,
    image_embeds: Tensor,
    time_ids: Tensor,
    guidance: Tensor,
    precond: VPredictionPreconditioning | None = None,
) -> Denoiser:
    """D(x; sigma) = D_u + w_f (D_c - D_u) with one guidance weight w_f per frame (SVD's linear guidance).

    D_c sees the conditioning latent ``z_cond`` (B, C, h, w) and CLIP ``image_embeds``; D_u sees zeros for both,
    as ``StableVideoDiffusionPipeline`` does. Both run in one UNet call on a doubled batch. Since D is affine in
    the network output for fixed (x, sigma), guiding D equals the pipeline's guidance of the raw prediction.
    When every w_f is 1 the unconditional pass is skipped. ``guidance``: (F,) or (B, F).
    """
    precond = precond or VPredictionPreconditioning()
    if _unguided(guidance):
        return lambda x, sigma: precond.denoise(video_F(unet, z_cond, image_embeds, time_ids), x, sigma)
    F2 = video_F(
        unet,
        torch.cat([torch.zeros_like(z_cond), z_cond]),
        torch.cat([torch.zeros_like(image_embeds), image_embeds]),
        torch.cat([time_ids, time_ids]),
    )
    return _guided(F2, guidance, precond)


def _frame_weights(guidance: Tensor | float) -> Tensor:
    w = torch.as_tensor(guidance, dtype=torch.float32)
    return w.reshape(*((1,) if w.ndim == 1 else ()), *w.shape, 1, 1, 1)  # (1 or B, F, 1, 1, 1)


def _unguided(guidance: Tensor | float) -> bool:
    return bool((torch.as_tensor(guidance) == 1).all())


def _guided(F2, guidance: Tensor | float, precond: VPredictionPreconditioning) -> Denoiser:
    """D_u + w (D_c - D_u) from one call of ``F2`` on the doubled batch (unconditional half first)."""
    w = _frame_weights(guidance)

    def D(x: Tensor, sigma: Tensor) -> Tensor:
        D_u, D_c = precond.denoise(F2, torch.cat([x, x]), torch.cat([sigma, sigma])).chunk(2)
        return D_u + w.to(device=x.device, dtype=x.dtype) * (D_c - D_u)

    return D


def guided_text_denoiser(
    unet: Callable[..., object],
    context: Tensor,
    null_context: Tensor,
    time_ids: Tensor,
    guidance: Tensor | float,
    precond: VPredictionPreconditioning | None = None,
) -> Denoiser:
    """D of a text-to-video UNet with classifier-free guidance against the empty caption's ``null_context``
    (what training dropped conditions to). ``context`` (B, L, D); ``null_context`` (1 or B, L, D)."""
    precond = precond or VPredictionPreconditioning()
    if _unguided(guidance):
        return lambda x, sigma: precond.denoise(text_video_F(unet, context, time_ids), x, sigma)
    null = null_context.expand_as(context)
    F2 = text_video_F(unet, torch.cat([null, context]), torch.cat([time_ids, time_ids]))
    return _guided(F2, guidance, precond)


def sample_video(
    unet: Callable[..., object],
    z_cond: Tensor,
    image_embeds: Tensor,
    *,
    num_frames: int,
    fps: float | Tensor,
    motion_bucket_id: int | Tensor,
    sigma_aug: float | Tensor,
    steps: int = 25,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    min_guidance: float = 1.0,
    max_guidance: float = 2.5,
    heun: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Latents (B, num_frames, C, h, w) of image-to-video samples.

    ``z_cond`` (B, C, h, w) is the posterior mode of the noise-augmented conditioning frame (unscaled, see
    ``training.conditioning``), ``image_embeds`` (B, D) or (B, 1, D) its CLIP embedding; ``fps``,
    ``motion_bucket_id`` and ``sigma_aug`` are scalars or (B,). Karras sigmas (EDM Eq. 5) from ``sigma_max`` to
    ``sigma_min`` in ``steps`` steps; Euler, or Heun with ``heun=True`` (about twice the UNet calls).
    """
    b = z_cond.shape[0]
    device = _device(unet, z_cond)
    time_ids = added_time_ids(
        *(torch.as_tensor(v, dtype=torch.float32).expand(b) for v in (fps, motion_bucket_id, sigma_aug))
    )
    D = guided_video_denoiser(
        unet,
        z_cond.float().to(device),
        image_embeds.float().to(device),
        time_ids.to(device),
        linear_guidance(num_frames, min_guidance, max_guidance),
    )
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, dtype=torch.float64)
    shape = (b, num_frames, *z_cond.shape[1:])
    return edm_sample(D, shape, sigmas, heun=heun, generator=generator, device=device)


def _device(unet, like: Tensor) -> torch.device:
    """Where sampling runs: the network's device (a plain function: the conditions')."""
    where = model_device_dtype(unet)
    return where[0] if where is not None else like.device


def sample_text_video(
    unet: Callable[..., object],
    context: Tensor,
    null_context: Tensor,
    *,
    latent_shape: tuple[int, int, int],
    num_frames: int,
    fps: float | Tensor,
    motion_bucket_id: int | Tensor,
    steps: int = 25,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    guidance: float = 7.5,
    heun: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Latents (B, num_frames, C, h, w) of text-to-video samples from caption ``context`` (B, L, D).

    ``latent_shape`` is (C, h, w); one guidance scale for every frame (SD's text guidance), Karras sigmas and
    Euler/Heun as ``sample_video``. The noise-augmentation time id is 0, as in text-conditioned training.
    """
    b = context.shape[0]
    device = _device(unet, context)
    fps, bucket = (torch.as_tensor(v, dtype=torch.float32).expand(b) for v in (fps, motion_bucket_id))
    time_ids = added_time_ids(fps, bucket, torch.zeros(b)).to(device)
    D = guided_text_denoiser(unet, context.float().to(device), null_context.float().to(device), time_ids, guidance)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, dtype=torch.float64)
    return edm_sample(D, (b, num_frames, *latent_shape), sigmas, heun=heun, generator=generator, device=device)


def sample_images(
    unet: Callable[..., object],
    context: Tensor,
    *,
    latent_shape: tuple[int, int, int],
    steps: int = 25,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Latents (B, C, h, w) of Stage I images from caption ``context`` (B, L, D), Euler on Karras sigmas, no
    guidance (EDM's image sigma_max of 80)."""
    precond = VPredictionPreconditioning()
    device = _device(unet, context)
    F = image_F(unet, context.float().to(device))
    sigmas = karras_sigmas(steps, sigma_min, sigma_max)
    return edm_sample(lambda x, s: precond.denoise(F, x, s), (context.shape[0], *latent_shape), sigmas,
                      generator=generator, device=device)


@torch.no_grad()
def decode_latents(vae, latents: Tensor, decode_chunk_size: int = 14) -> Tensor:
    """Frames (B, F, 3, H, W) in [0, 1] from latents (B, F, C, h, w), as ``StableVideoDiffusionPipeline`` does.

    Latents are divided by the autoencoder's ``scaling_factor`` and decoded ``decode_chunk_size`` frames at a
    time; the temporal decoder (``AutoencoderKLTemporalDecoder``) takes ``num_frames`` of each chunk. Chunks
    never span two videos. Output [-1, 1] is mapped to [0, 1] and clamped.
    """
    if decode_chunk_size < 1:
        raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
    z = latents / vae.config.scaling_factor
    takes_num_frames = "num_frames" in inspect.signature(vae.decode).parameters
    videos = []
    for video in z:
        chunks = []
        for i in range(0, video.shape[0], decode_chunk_size):
            chunk = video[i : i + decode_chunk_size]
            kwargs = {"num_frames": chunk.shape[0]} if takes_num_frames else {}
            chunks.append(vae.decode(to_model(chunk, vae), **kwargs).sample.float())
        videos.append(torch.cat(chunks))
    return (torch.stack(videos) / 2 + 0.5).clamp(0, 1)
