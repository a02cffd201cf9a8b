"""Tests for training.metrics.temporal_consistency with curation's tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.metrics.temporal_consistency import (
    ClipFrameEmbedder,
    temporal_consistency,
    temporal_consistency_per_video,
)


@pytest.fixture(scope="module")
def embedder():
    return ClipFrameEmbedder("tiny-clip", seed=0)


def _smooth_video(frames=6, size=48) -> torch.Tensor:
    """A gradient panning 2 px per frame: consecutive frames nearly equal."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack(
        [
            torch.stack(
                [((xx + 2 * k) % size) / (size - 1), yy / (size - 1), torch.full((size, size), 0.5)]
            ).float()
            for k in range(frames)
        ]
    )


def test_constant_video_scores_one(embedder):
    video = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0)).expand(5, 3, 40, 56)
    assert temporal_consistency(video[None], embedder) == pytest.approx(1.0, abs=1e-6)


def test_noise_frames_score_lower_than_a_smooth_video(embedder):
    noise = torch.rand(6, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    per = temporal_consistency_per_video(torch.stack([noise, _smooth_video()]), embedder)
    assert per.shape == (2,)
    assert per[0] < per[1] <= 1.0
    assert temporal_consistency([noise, _smooth_video()], embedder) == pytest.approx(per.mean())


def test_mean_of_consecutive_cosines_with_a_known_embedding():
    # An embedder whose embedding is the frame's mean colour: the metric's arithmetic is checked by hand.
    class MeanColour:
        name = "mean-colour"

        def embed_images(self, frames):
            return np.stack([f.reshape(-1, 3).mean(0) for f in frames])

    colours = np.array([[255, 0, 0], [255, 255, 0], [0, 255, 0]], np.uint8)
    video = np.broadcast_to(colours[:, None, None, :], (3, 4, 4, 3))
    # cos(red, yellow) = cos(yellow, green) = 1/sqrt(2)
    assert temporal_consistency(video[None], MeanColour()) == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError):
        temporal_consistency(video[None, :1], MeanColour())
