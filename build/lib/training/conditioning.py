"""SVD image-to-video conditioning (Blattmann et al. 2023, Section 4 and App. D; diffusers' SVD pipeline).

What the video UNet ``F`` sees besides the noisy latent:
  * the conditioning frame's latent ``z_cond`` (posterior mode of the noise-augmented first frame, NOT scaled
    by the autoencoder's 0.18215), repeated on every frame and concatenated on the channel axis;
  * the CLIP image embedding of the conditioning frame, as a one-token cross-attention context;
  * three added time ids, each given a 256-d sinusoidal embedding inside the UNet:
    ``fps - 1``, ``motion_bucket_id`` (0..255) and the noise-augmentation strength ``sigma_aug``.

The noise augmentation follows ln(sigma_aug) ~ N(-3, 0.5^2). The autoencoder is not run per training step,
so the latents asset stores a few augmented encodings per clip with their ``sigma_aug``; each step picks one.

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

from training.edm import LogNormalSigma

__all__ = [
    "COND_AUG_P_MEAN",
    "COND_AUG_P_STD",
    "added_time_ids",
    "drop_conditions",
    "motion_bucket",
    "motion_score_of_bucket",
    "sample_cond_aug",
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
    fps, motion_bucket_id, sigma_aug = (torch.as_tensor(t, dtype=torch.float32) for t in (fps, motion_bucket_id, sigma_aug))
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
        cond = z_cond[:, None].to(x.dtype).expand(-1, x.shape[1], -1, -1, -1)
        return unet(
            torch.cat([x, cond], dim=2),
            c_noise,
            encoder_hidden_states=context.to(x.dtype),
            added_time_ids=time_ids.to(device=x.device, dtype=x.dtype),
        ).sample

    return F
