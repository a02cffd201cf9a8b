"""Video conditioning per stage (``training.stages.N.conditioning``): ``text`` or ``image`` (SVD, Blattmann et al.
2023, Section 4 and App. D; diffusers' SVD pipeline).

``text`` (the paper's Stage II, video pretraining and its curation ablations): the inflated UNet keeps SD 2.1's
text cross-attention on the caption's context (open_clip's penultimate layer, ``training.latents``), with the
``fps - 1`` and ``motion_bucket_id`` micro-conditioning; its ``conv_in`` sees the noisy latent only and the third
added time id (noise augmentation) is 0. ``text_video_F`` binds these.

``image`` (the image-to-video finetune, released as SVD): what the video UNet ``F`` sees besides the noisy latent:
  * the conditioning frame's latent ``z_cond`` (posterior mode of the noise-augmented first frame, NOT scaled
    by the autoencoder's 0.18215), repeated on every frame and concatenated on the channel axis;
  * the CLIP image embedding of the conditioning frame, as a one-token cross-attention context;
  * three added time ids, each given a 256-d sinusoidal embedding inside the UNet:
    ``fps - 1``, ``motion_bucket_id`` (0..255) and the noise-augmentation strength ``sigma_aug``.

The noise augmentation follows ln(sigma_aug) ~ N(-3, 0.5^2), a fresh draw every step in the paper. With
``training.cond_aug_online`` (the ``svd`` profile, on a GPU) the conditioning frame is noised and encoded online
every step (``training.objectives``); otherwise (CPU profile) the latents asset stores K augmented encodings
per clip with their ``sigma_aug`` and each step picks one, a deviation that keeps the CPU demo fast.

Every network input is moved to the network's device and dtype where it is used (``training.device.to_model``),
so callers hand in fp32 tensors wherever they live; ``c_noise`` and the added time ids stay fp32 (diffusers
embeds them in fp32 and casts the embedding).

Motion bucket mapping (ours; the paper does not publish one). The curation scorer's ``motion_score`` is the mean
Farneback flow magnitude; it is heavy-tailed, so the bucket is logarithmic in it:

    motion_bucket_id = round(255 * clamp(log1p(motion_score) / log1p(motion_score_max), 0, 1))

A static clip maps to 0, ``motion_score_max`` (config ``training.motion_score_max``) and above to 255, and the
map is strictly increasing in between, so rank statistics (the evaluation's motion fidelity) survive it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from training.device import to_model
from training.edm import LogNormalSigma

__all__ = [
    "COND_AUG_P_MEAN",
    "COND_AUG_P_STD",
    "added_time_ids",
    "drop_conditions",
    "image_F",
    "motion_bucket",
    "motion_score_of_bucket",
    "sample_cond_aug",
    "text_video_F",
    "video_F",
]

COND_AUG_P_MEAN = -3.0
COND_AUG_P_STD = 0.5


def motion_bucket(motion_score: Tensor | float, motion_score_max: float) -> Tensor:
    """Map curation motion scores to SVD motion bucket ids in 0..255 (see module docstring)."""
    if motion_score_max <= 0:
        raise ValueError(f"motion_score_max must be positive, got {motion_score_max}")
    s = torch.as_tensor(motion_score, dtype=torch.float64).clamp_min(0)
    frac = (torch.log1p(s) / math.log1p(motion_score_max)).clamp(0, 1)
    return torch.round(255 * frac).to(torch.int64)


def motion_score_of_bucket(bucket: Tensor | float, motion_score_max: float) -> Tensor:
    """Inverse of ``motion_bucket`` (up to rounding): the motion score a bucket asks for."""
    b = torch.as_tensor(bucket, dtype=torch.float64).clamp(0, 255)
    return torch.expm1(b / 255 * math.log1p(motion_score_max))


def sample_cond_aug(
    n: int, generator: torch.Generator | None = None, P_mean: float = COND_AUG_P_MEAN, P_std: float = COND_AUG_P_STD
) -> Tensor:
    """sigma_aug with ln(sigma_aug) ~ N(P_mean, P_std^2), SVD's conditioning-frame noise augmentation."""
    return LogNormalSigma(P_mean, P_std).sample(n, generator=generator)


def added_time_ids(fps: Tensor, motion_bucket_id: Tensor, sigma_aug: Tensor) -> Tensor:
    """(B, 3) added time ids in the order the UNet and ``StableVideoDiffusionPipeline`` use: fps-1, bucket, aug.

    The pipeline subtracts 1 from the user's fps before embedding it; training does the same so that a clip
    recorded at ``fps`` is asked for with ``fps`` at sampling time.
    """
    fps, motion_bucket_id, sigma_aug = (
        torch.as_tensor(t, dtype=torch.float32) for t in (fps, motion_bucket_id, sigma_aug)
    )
    return torch.stack([fps - 1, motion_bucket_id, sigma_aug], dim=-1)


def drop_conditions(
    z_cond: Tensor, image_embeds: Tensor, p_drop: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Zero the conditioning frame latent and image embedding of a random ``p_drop`` share of the batch.

    ``StableVideoDiffusionPipeline`` forms its unconditional branch with zeros for both, so training drops
    them together to the same zeros; that is what makes classifier-free guidance meaningful at sampling time.
    """
    if p_drop <= 0:
        return z_cond, image_embeds
    keep = (torch.rand(z_cond.shape[0], generator=generator) >= p_drop).to(z_cond.device)
    return (
        z_cond * keep.view(-1, *([1] * (z_cond.ndim - 1))).to(z_cond.dtype),
        image_embeds * keep.view(-1, *([1] * (image_embeds.ndim - 1))).to(image_embeds.dtype),
    )


def video_F(
    unet: Callable[..., object], z_cond: Tensor, image_embeds: Tensor, time_ids: Tensor
) -> Callable[[Tensor, Tensor], Tensor]:
    """The raw network F(c_in x; c_noise) of a video UNet with the image-to-video conditions bound.

    ``x``: (B, frames, C, h, w) preconditioned noisy latents; ``z_cond``: (B, C, h, w);
    ``image_embeds``: (B, D) or (B, 1, D); ``time_ids``: (B, 3). Returns (B, frames, C, h, w).
    """
    context = image_embeds if image_embeds.ndim == 3 else image_embeds[:, None, :]

    def F(x: Tensor, c_noise: Tensor) -> Tensor:
        x = to_model(x, unet)
        cond = to_model(z_cond, unet)[:, None].expand(-1, x.shape[1], -1, -1, -1)
        return unet(
            torch.cat([x, cond], dim=2),
            c_noise.to(x.device),
            encoder_hidden_states=to_model(context, unet),
            added_time_ids=time_ids.to(x.device),
        ).sample

    return F


def text_video_F(unet: Callable[..., object], context: Tensor, time_ids: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """F of a text-conditioned video UNet: ``context`` (B, L, D) caption tokens by cross-attention, ``time_ids`` (B, 3)
    (``added_time_ids`` with sigma_aug = 0). ``x``: (B, frames, C, h, w) -> (B, frames, C, h, w)."""

    def F(x: Tensor, c_noise: Tensor) -> Tensor:
        x = to_model(x, unet)
        return unet(
            x, c_noise.to(x.device), encoder_hidden_states=to_model(context, unet), added_time_ids=time_ids.to(x.device)
        ).sample

    return F


def image_F(unet: Callable[..., object], context: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """F of the Stage I image UNet on caption ``context`` (B, L, D). ``x``: (B, C, h, w)."""

    def F(x: Tensor, c_noise: Tensor) -> Tensor:
        x = to_model(x, unet)
        return unet(x, c_noise.to(x.device), encoder_hidden_states=to_model(context, unet)).sample

    return F
