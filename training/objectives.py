"""Per-stage training objectives: the EDM loss of one micro-batch, with every random draw made up front.

A step's randomness (sigma, noise, condition dropout, the conditioning-frame augmentation) is drawn per sample,
each from a generator seeded by (seed, step, the sample's index in the global batch) (``training.engine.
draw_samples``), so the losses do not depend on how the batch is split over processes or accumulation steps,
which is what makes a resumed run and a 2-process run reproduce the 1-process run (see ``training.engine``).

Every objective returns the per-sample loss lambda(sigma) ||D(x; sigma) - x0||^2 (Karras et al. 2022, Eq. 2)
with SVD's v-prediction preconditioning (``VPredictionPreconditioning``, sigma_data = 1). ``x = x0 + sigma n``,
``D`` and the loss stay fp32; only the network's input and compute take its own dtype (bf16 on a GPU), see
``_Preconditioning.denoise``.

  ImageObjective      Stage I, text-to-image
  TextVideoObjective  video stage with ``conditioning: text`` (the paper's Stage II)
  VideoObjective      video stage with ``conditioning: image`` (image-to-video, the released SVD)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from training.conditioning import added_time_ids, image_F, sample_cond_aug, text_video_F, video_F
from training.edm import LogNormalSigma, VPredictionPreconditioning, append_dims, edm_loss

__all__ = ["ImageObjective", "Objective", "TextVideoObjective", "VideoObjective", "objective_for"]

Batch = dict[str, Tensor]
NetF = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Objective:
    sigma_dist: LogNormalSigma
    p_drop: float = 0.1  # share of samples trained without conditioning (for classifier-free guidance)

    precond = VPredictionPreconditioning()

    def draw(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Random tensors for the whole batch, each with the batch as leading dim."""
        x0 = batch["latents"]
        n = x0.shape[0]
        return {
            "sigma": self.sigma_dist.sample(n, generator=generator),
            "noise": torch.randn(x0.shape, generator=generator),
            "keep": (torch.rand(n, generator=generator) >= self.p_drop).float(),
        }

    def F(self, model, batch: Batch) -> NetF:
        """The raw network with this batch's conditions bound (condition dropout applied)."""
        raise NotImplementedError

    def loss(self, model, batch: Batch, dtype: torch.dtype | None = None) -> Tensor:
        """Per-sample EDM loss (B,). The network runs in its own dtype and device; ``dtype`` is accepted for
        older callers and ignored, since feeding a network anything but its parameters' dtype fails."""
        x0, sigma = batch["latents"].float(), batch["sigma"].float()
        x = x0 + append_dims(sigma, x0.ndim) * batch["noise"].float()
        D = self.precond.denoise(self.F(model, batch), x, sigma)
        return edm_loss(D, x0, sigma, self.precond.sigma_data)


def _mix_context(batch: Batch) -> Tensor:
    """Dropped samples see the empty caption's context (what guidance contrasts with)."""
    keep = append_dims(batch["keep"].float(), batch["context"].ndim)
    return keep * batch["context"] + (1 - keep) * batch["null_context"]


class ImageObjective(Objective):
    """Stage I: text-to-image on the caption context."""

    def F(self, model, batch: Batch) -> NetF:
        return image_F(model, _mix_context(batch))


class TextVideoObjective(Objective):
    """Video stage conditioned on text: caption context by cross-attention, fps and motion bucket as added time
    ids (noise augmentation 0, there is no conditioning frame). Batch: latents, context, null_context, fps,
    motion_bucket."""

    def F(self, model, batch: Batch) -> NetF:
        time_ids = added_time_ids(batch["fps"], batch["motion_bucket"], torch.zeros_like(batch["fps"]))
        return text_video_F(model, _mix_context(batch), time_ids)


@dataclass
class VideoObjective(Objective):
    """Image-to-video with SVD's conditioning (``training.conditioning``).

    Stored draws (``cond_vae`` None, the CPU profile): the batch holds ``z_cond_aug`` (B, K, C, h, w), K
    noise-augmented encodings of the first frame with their ``sigma_aug`` (B, K); each step picks one per sample.
    Online (``cond_vae`` set, ``training.cond_aug_online``): the batch holds the clean first frame ``cond_frame``
    (B, 3, H, W) in [-1, 1]; each step draws sigma_aug and the pixel noise afresh and encodes
    ``cond_frame + sigma_aug * n`` with the autoencoder on its device, as the paper trains.
    """

    cond_vae: torch.nn.Module | None = None

    def draw(self, batch: Batch, generator: torch.Generator) -> Batch:
        r = super().draw(batch, generator)
        n = batch["latents"].shape[0]
        if self.cond_vae is not None:
            if "cond_frame" not in batch:
                raise KeyError("training.cond_aug_online needs the conditioning frame pixels (cond_frame) in the "
                               "latent store; rebuild the latents, or set training.cond_aug_online=false")
            r["aug_sigma"] = sample_cond_aug(n, generator=generator)
            r["aug_noise"] = torch.randn(batch["cond_frame"].shape, generator=generator)
        else:
            k = batch["sigma_aug"].shape[1]
            r["aug_index"] = torch.randint(0, k, (n,), generator=generator)
        return r

    def conditioning_latent(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(z_cond (B, C, h, w) fp32, sigma_aug (B,)) of this step."""
        if self.cond_vae is not None:
            from training.encoders import encode_latents

            sigma_aug = append_dims(batch["aug_sigma"].float(), 4)
            frame = batch["cond_frame"].float() + sigma_aug * batch["aug_noise"].float()
            z = encode_latents(self.cond_vae, frame).float().to(batch["latents"].device)
            return z, batch["aug_sigma"].float()
        rows = torch.arange(batch["latents"].shape[0], device=batch["latents"].device)
        idx = batch["aug_index"].to(rows.device)
        return batch["z_cond_aug"][rows, idx].float(), batch["sigma_aug"][rows, idx].float()

    def F(self, model, batch: Batch) -> NetF:
        z_cond, sigma_aug = self.conditioning_latent(batch)
        keep = batch["keep"].float().to(z_cond.device)
        z_cond = z_cond * append_dims(keep, 4)
        embeds = batch["image_embeds"].float() * append_dims(keep, batch["image_embeds"].ndim)
        time_ids = added_time_ids(batch["fps"], batch["motion_bucket"], sigma_aug)
        return video_F(model, z_cond, embeds, time_ids)


def objective_for(stage: int, conditioning: str, sigma: LogNormalSigma, p_drop: float, cond_vae=None) -> Objective:
    """The objective of a stage: Stage I text-to-image, a video stage by its ``conditioning`` (text | image)."""
    if stage == 1:
        return ImageObjective(sigma, p_drop)
    if conditioning == "text":
        return TextVideoObjective(sigma, p_drop)
    if conditioning == "image":
        return VideoObjective(sigma, p_drop, cond_vae=cond_vae)
    raise ValueError(f"unknown conditioning {conditioning!r}: use text or image")
