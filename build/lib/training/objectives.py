"""Per-stage training objectives: the EDM loss of one micro-batch, with every random draw made up front.

A step's randomness (sigma, noise, condition dropout, which augmented conditioning latent) is drawn for the
*global* batch from one generator seeded by (seed, step), then sliced per rank and micro-batch together with
the data. So the losses do not depend on how the batch is split over processes or accumulation steps, which
is what makes a resumed run and a 2-process run reproduce the 1-process run (see ``training.engine``).

Both objectives return the per-sample loss lambda(sigma) ||D(x; sigma) - x0||^2 (Karras et al. 2022, Eq. 2)
with SVD's v-prediction preconditioning (``VPredictionPreconditioning``, sigma_data = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from training.conditioning import added_time_ids, video_F
from training.edm import LogNormalSigma, VPredictionPreconditioning, append_dims, edm_loss

__all__ = ["ImageObjective", "Objective", "VideoObjective"]

Batch = dict[str, Tensor]


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

    def _noised(self, batch: Batch, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        x0, sigma = batch["latents"], batch["sigma"]
        return (x0 + append_dims(sigma, x0.ndim) * batch["noise"]).to(dtype), sigma.to(dtype)

    def loss(self, model, batch: Batch, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError


class ImageObjective(Objective):
    """Stage I: text-to-image. Dropped samples see the empty caption's context (what guidance contrasts with)."""

    def loss(self, model, batch: Batch, dtype: torch.dtype = torch.float32) -> Tensor:
        x, sigma = self._noised(batch, dtype)
        keep = append_dims(batch["keep"], batch["context"].ndim)
        context = keep * batch["context"] + (1 - keep) * batch["null_context"]

        def F(x_in: Tensor, c_noise: Tensor) -> Tensor:
            return model(x_in, c_noise, encoder_hidden_states=context.to(dtype)).sample

        D = self.precond.denoise(F, x, sigma)
        return edm_loss(D.float(), batch["latents"], batch["sigma"], self.precond.sigma_data)


@dataclass
class VideoObjective(Objective):
    """Stages II/III: image-to-video with SVD's conditioning (``training.conditioning``).

    The batch holds ``z_cond_aug`` (B, K, C, h, w): K noise-augmented encodings of the first frame with their
    ``sigma_aug`` (B, K), computed once by the latents asset; each step picks one per sample.
    """

    def draw(self, batch: Batch, generator: torch.Generator) -> Batch:
        r = super().draw(batch, generator)
        k = batch["sigma_aug"].shape[1]
        r["aug_index"] = torch.randint(0, k, (batch["latents"].shape[0],), generator=generator)
        return r

    def loss(self, model, batch: Batch, dtype: torch.dtype = torch.float32) -> Tensor:
        x, sigma = self._noised(batch, dtype)
        rows = torch.arange(x.shape[0], device=x.device)
        idx = batch["aug_index"].to(x.device)
        keep = batch["keep"].to(x.device)
        z_cond = batch["z_cond_aug"][rows, idx] * append_dims(keep, 4)
        embeds = batch["image_embeds"] * append_dims(keep, batch["image_embeds"].ndim)
        time_ids = added_time_ids(batch["fps"], batch["motion_bucket"], batch["sigma_aug"][rows, idx])
        D = self.precond.denoise(video_F(model, z_cond.to(dtype), embeds.to(dtype), time_ids), x, sigma)
        return edm_loss(D.float(), batch["latents"], batch["sigma"], self.precond.sigma_data)
