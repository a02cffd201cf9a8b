"""Training batches from the stored latents: deterministic in (seed, step), whatever the number of processes.

``batches_fn(step)`` returns the *global* batch of a step (``training.engine.train_steps`` slices it per rank).
Samples are drawn epoch by epoch from a permutation seeded by (seed, epoch), so a resumed run continues the
same stream and every clip is seen once per epoch. Stage I draws images: one random frame of a clip's window,
with the clip's caption context.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from training.latents import LatentSet

__all__ = ["image_batches", "sample_indices", "text_video_batches", "video_batches"]

Batch = dict[str, Tensor]
VIDEO_KEYS = ("latents", "z_cond_aug", "sigma_aug", "image_embeds", "fps", "motion_bucket")


def sample_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Indices of the samples of ``step``: positions step*B .. step*B+B-1 of the concatenated epoch permutations."""
    if n < 1:
        raise ValueError("no training samples: the dataset is empty")
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
        sel = pos.div(n, rounding_mode="floor") == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def video_batches(
    data: LatentSet, batch_size: int, seed: int, keys: tuple[str, ...] = VIDEO_KEYS
) -> Callable[[int], Batch]:
    """Image-to-video batches; ``keys`` picks the stored fields (``cond_frame`` instead of the stored
    augmentations when the conditioning frame is encoded online)."""
    t = data.tensors
    missing = [k for k in keys if k not in t]
    if missing:
        raise KeyError(f"the latent store has no {missing}: rebuild the latents of this variant")

    def batches_fn(step: int) -> Batch:
        idx = sample_indices(len(data), batch_size, step, seed)
        return {k: t[k][idx] for k in keys}

    return batches_fn


def text_video_batches(data: LatentSet, batch_size: int, seed: int) -> Callable[[int], Batch]:
    """Text-to-video batches: the clip's latents, caption context, fps and motion bucket."""
    t = data.tensors

    def batches_fn(step: int) -> Batch:
        idx = sample_indices(len(data), batch_size, step, seed)
        return {
            "latents": t["latents"][idx],
            "context": t["context"][idx],
            "null_context": t["null_context"].expand(batch_size, -1, -1),
            "fps": t["fps"][idx],
            "motion_bucket": t["motion_bucket"][idx],
        }

    return batches_fn


def image_batches(data: LatentSet, batch_size: int, seed: int) -> Callable[[int], Batch]:
    t = data.tensors
    frames = t["latents"].shape[1]

    def batches_fn(step: int) -> Batch:
        idx = sample_indices(len(data) * frames, batch_size, step, seed)
        clip, frame = idx // frames, idx % frames
        return {
            "latents": t["latents"][clip, frame],
            "context": t["context"][clip],
            "null_context": t["null_context"].expand(batch_size, -1, -1),
        }

    return batches_fn
