"""Deterministic synthetic batches (shapes of the real latents asset) for tests and throughput benchmarks.

Batch ``step`` depends only on (seed, step), so a resumed or multi-process run sees the same data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["synthetic_image_batches", "synthetic_latent_store", "synthetic_video_batches"]

Batch = dict[str, Tensor]


def _generator(seed: int, step: int) -> torch.Generator:
    # Offset by a large odd constant so the data stream stays apart from the noise streams (training.engine.sample_seed).
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 7_919)


def synthetic_image_batches(
    batch_size: int,
    seed: int,
    *,
    channels: int = 4,
    height: int = 16,
    width: int = 16,
    context_len: int = 1,
    context_dim: int = 64,
) -> Callable[[int], Batch]:
    """Stage I batches; defaults match ``build_image_unet("tiny")`` (4 channels, 16x16, context dim 64)."""

    def batches_fn(step: int) -> Batch:
        g = _generator(seed, step)
        return {
            "latents": torch.randn(batch_size, channels, height, width, generator=g),
            "context": torch.randn(batch_size, context_len, context_dim, generator=g),
            "null_context": torch.zeros(batch_size, context_len, context_dim),
        }

    return batches_fn


def synthetic_video_batches(
    batch_size: int,
    seed: int,
    *,
    frames: int = 3,
    channels: int = 4,
    height: int = 16,
    width: int = 16,
    embed_dim: int = 64,
    aug_samples: int = 2,
) -> Callable[[int], Batch]:
    """Stage II/III batches with SVD's conditioning; defaults match ``build_video_unet("tiny")``."""

    def batches_fn(step: int) -> Batch:
        g = _generator(seed, step)
        b = batch_size
        return {
            "latents": torch.randn(b, frames, channels, height, width, generator=g),
            "z_cond_aug": torch.randn(b, aug_samples, channels, height, width, generator=g),
            "sigma_aug": torch.exp(-3 + 0.5 * torch.randn(b, aug_samples, generator=g)),
            "image_embeds": torch.randn(b, embed_dim, generator=g),
            "fps": torch.randint(4, 31, (b,), generator=g).float(),
            "motion_bucket": torch.randint(0, 256, (b,), generator=g).float(),
        }

    return batches_fn


def synthetic_latent_store(root, base: str, clips: int, shard_clips: int, *, val_clips: int = 0, frames: int = 4,
                           height: int = 16, width: int = 16, aug_samples: int = 2, embed_dim: int = 64,
                           context: bool = True, context_len: int = 77, seed: int = 0) -> dict:
    """A latent store of ``clips`` random clips (the last ``val_clips`` evaluation rows) at the given latent shapes,
    written shard by shard as ``training.latents.build_latents`` writes one, without the encoders; its index."""
    from training.latent_store import ShardWriter, resume_point

    fingerprint = {"synthetic": [clips, shard_clips, frames, height, width, context, seed]}
    writer = ShardWriter(root, base, fingerprint, shard_clips, resume_point(root, base, fingerprint))
    for i in range(clips):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        row = {
            "latents": torch.randn(frames, 4, height, width, generator=g),
            "z_cond_aug": torch.randn(aug_samples, 4, height, width, generator=g),
            "sigma_aug": torch.exp(-3 + 0.5 * torch.randn(aug_samples, generator=g)),
            "image_embeds": torch.randn(embed_dim, generator=g),
            "fps": torch.tensor(7.0),
            "motion_score": torch.tensor(float(i % 32)),
            "motion_bucket": torch.tensor(float(i % 256)),
            "val": torch.tensor(float(i >= clips - val_clips)),
        }
        if context:
            row["context"] = torch.randn(context_len, embed_dim, generator=g)
        if writer.add(f"clip{i:07d}", f"caption {i}", row):
            writer.flush(i + 1)
    writer.flush(clips)
    null = torch.zeros(1, context_len, embed_dim) if context else None
    return writer.finish({"fingerprint": fingerprint, "context": context, "scaling_factor": 1.0}, null)
