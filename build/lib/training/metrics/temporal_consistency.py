"""Temporal consistency: mean CLIP cosine similarity of consecutive generated frames.

A common video-generation metric (e.g. Esser et al. 2023, "Gen-1", Sec. 4: "CLIP score between consecutive
frames"): for a video with frame embeddings e_1..e_F, TC = 1/(F-1) sum_t cos(e_t, e_{t+1}); the metric is its
mean over videos. Frames are embedded with curation's open_clip loading (``curation.clip_models``), through the
model's own preprocessing, exactly as the CLIP scorer embeds clip frames; any object with curation's
``embed_images(frames) -> (n, d)`` (such as ``curation.clip_scores.ClipScorer``) can be passed instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch

from curation.clip_models import load_model
from training.video_io import to_uint8_frames

__all__ = ["ClipFrameEmbedder", "FrameEmbedder", "temporal_consistency", "temporal_consistency_per_video"]


class FrameEmbedder(Protocol):
    name: str

    def embed_images(self, frames: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 HxWx3 frames -> (n, d) embeddings."""


class ClipFrameEmbedder:
    """Unit-norm open_clip image embeddings of RGB uint8 frames; ``name`` is curation's weights label."""

    def __init__(
        self,
        model_name: str = "tiny-clip",
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 32,
    ):
        self._clip = load_model(model_name, pretrained, seed=seed, device=device)
        self.model_name = model_name
        self.name = self._clip.name
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed_images(self, frames: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(frames), self.batch_size):
            batch = self._clip.images_to_tensor(list(frames[i : i + self.batch_size]))
            out.append(self._clip.model.encode_image(batch, normalize=True).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _videos(videos) -> Iterable[np.ndarray]:
    """Each video as (F, H, W, 3) uint8, from a (N, F, 3, H, W) / (N, F, H, W, 3) batch or a list of videos."""
    for v in videos:
        yield to_uint8_frames(v)


def temporal_consistency_per_video(videos, embedder: FrameEmbedder | None = None) -> np.ndarray:
    """Per video, the mean cosine similarity of consecutive frames' embeddings, in [-1, 1]."""
    embedder = embedder or ClipFrameEmbedder()
    scores = []
    for v in _videos(videos):
        if len(v) < 2:
            raise ValueError("temporal consistency needs videos of at least two frames")
        e = np.asarray(embedder.embed_images(list(v)), np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        scores.append(float(np.clip(np.sum(e[:-1] * e[1:], axis=1).mean(), -1.0, 1.0)))
    return np.asarray(scores, np.float64)


def temporal_consistency(videos, embedder: FrameEmbedder | None = None) -> float:
    """Mean over videos of ``temporal_consistency_per_video``."""
    scores = temporal_consistency_per_video(videos, embedder)
    if len(scores) == 0:
        raise ValueError("no videos")
    return float(scores.mean())
