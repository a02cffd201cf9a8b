"""Held-out validation loss at fixed noise levels and fixed noise, comparable across variants and runs.

The training loss is noisy because sigma and the noise are random (Karras et al. 2022, Eq. 2). Here both are
fixed: every held-out batch is evaluated at each sigma of a fixed list, with noise drawn from a generator seeded
by (seed, batch index, sigma index). Two runs, checkpoints or curation variants evaluated on the same held-out
batches therefore see identical inputs, and their per-sigma losses differ only through the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training.edm import edm_loss

__all__ = [
    "DEFAULT_VALIDATION_SIGMAS",
    "denoiser_loss_fn",
    "noise_generator",
    "objective_loss_fn",
    "validation_loss",
]

# Log-spread over the range where training puts its noise (EDM and SVD's shifted log-normals, see training.edm).
DEFAULT_VALIDATION_SIGMAS: tuple[float, ...] = (0.02, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)

LossFn = Callable[[Tensor, Tensor, Tensor, Any], Tensor]  # (x0, sigma (B,), noise, batch) -> per-sample (B,)


def noise_generator(seed: int, batch_index: int, sigma_index: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, batch index, sigma index)."""
    state = np.random.SeedSequence([seed, batch_index, sigma_index]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def _x0(batch: Any, key: str) -> Tensor:
    return batch[key] if isinstance(batch, Mapping) else batch


@torch.no_grad()
def validation_loss(
    loss_fn: LossFn,
    batches: Iterable[Any],
    sigmas: Sequence[float] = DEFAULT_VALIDATION_SIGMAS,
    seed: int = 0,
    *,
    x0_key: str = "latents",
) -> dict[str, Any]:
    """Mean EDM loss over held-out ``batches`` at each fixed sigma.

    A batch is a tensor x0 or a mapping holding x0 under ``x0_key`` (the training batches' ``latents``).
    ``loss_fn(x0, sigma, noise, batch)`` returns the per-sample loss for x = x0 + sigma * noise, so the same
    metric serves the image and the video objectives (``objective_loss_fn``). Returns ``mean`` (over all samples
    and sigmas), ``per_sigma`` {sigma: mean loss}, ``sigmas``, ``num_samples`` (held-out samples seen) and
    ``per_sample`` (each sample's mean over sigmas: its spread gives the figure's standard error).
    """
    sigmas = [float(s) for s in sigmas]
    if not sigmas or min(sigmas) <= 0:
        raise ValueError(f"sigmas must be a non-empty list of positive values, got {sigmas}")
    sums = np.zeros(len(sigmas), np.float64)
    n, per_sample_all = 0, []
    for b, batch in enumerate(batches):
        x0 = _x0(batch, x0_key)
        over_sigmas = np.zeros(x0.shape[0], np.float64)
        for j, s in enumerate(sigmas):
            noise = torch.randn(x0.shape, generator=noise_generator(seed, b, j), dtype=torch.float32)
            sigma = torch.full((x0.shape[0],), s, dtype=torch.float32)
            per_sample = loss_fn(x0, sigma.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype), batch)
            if per_sample.shape != (x0.shape[0],):
                raise ValueError(
                    f"loss_fn must return per-sample losses of shape ({x0.shape[0]},), "
                    f"got {tuple(per_sample.shape)}"
                )
            sums[j] += float(per_sample.double().sum())
            over_sigmas += per_sample.double().cpu().numpy() / len(sigmas)
        per_sample_all.append(over_sigmas)
        n += x0.shape[0]
    if n == 0:
        raise ValueError("no held-out batches")
    per_sigma = sums / n
    return {
        "mean": float(per_sigma.mean()),
        "per_sigma": dict(zip(sigmas, per_sigma.tolist())),
        "sigmas": sigmas,
        "num_samples": n,
        "per_sample": np.concatenate(per_sample_all).tolist(),  # each sample's mean over sigmas
    }


def denoiser_loss_fn(D: Callable[[Tensor, Tensor], Tensor], sigma_data: float = 1.0) -> LossFn:
    """Loss of a denoiser D(x, sigma): lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 (Karras et al., Eq. 2)."""

    def loss_fn(x0: Tensor, sigma: Tensor, noise: Tensor, batch: Any) -> Tensor:
        x = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
        return edm_loss(D(x, sigma), x0, sigma, sigma_data)

    return loss_fn


def objective_loss_fn(objective, model, dtype: torch.dtype = torch.float32) -> LossFn:
    """Loss of a ``training.objectives`` objective (image or video) with nothing dropped.

    Validation keeps every condition (``keep`` = 1) and uses the first stored augmented conditioning latent
    (``aug_index`` = 0), so that nothing random is left besides the fixed noise.
    """

    def loss_fn(x0: Tensor, sigma: Tensor, noise: Tensor, batch: Any) -> Tensor:
        b = x0.shape[0]
        full = {
            **batch,
            "latents": x0,
            "sigma": sigma,
            "noise": noise,
            "keep": torch.ones(b, device=x0.device),
            "aug_index": torch.zeros(b, dtype=torch.long, device=x0.device),
        }
        return objective.loss(model, full, dtype)

    return loss_fn
