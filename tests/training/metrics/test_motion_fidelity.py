"""Tests for training.metrics.motion_fidelity on synthetic videos with known motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from training.metrics.motion_fidelity import (
    generated_motion,
    motion_fidelity,
    motion_fidelity_per_frame,
    motion_score,
    motion_scores,
    sample_indices,
)


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w)).astype(np.uint8), (5, 5), 0)


def _moving_square(speed: float, frames: int = 6, size: int = 64) -> np.ndarray:
    """A textured 24x20 square moving ``speed`` pixels per frame to the right over a flat background."""
    patch = np.repeat(_texture(0, 24, 20)[:, :, None], 3, axis=2)
    out = np.full((frames, size, size, 3), 30, np.uint8)
    for k in range(frames):
        x = round(6 + speed * k)
        out[k, 20:44, x : x + 20] = patch
    return out


def _pan(shift_per_frame: int, frames: int, size: int) -> np.ndarray:
    big = _texture(1, size, size + shift_per_frame * frames)
    return np.stack(
        [
            np.repeat(big[:, k * shift_per_frame : k * shift_per_frame + size, None], 3, axis=2)
            for k in range(frames)
        ]
    )


def test_sample_indices_follow_curation_decode():
    assert sample_indices(14, fps=7, sample_fps=2) == [0, 4, 7, 10]  # step 3.5, Python rounding
    assert sample_indices(5, fps=1, sample_fps=2) == [0, 1, 2, 3, 4]  # never more than every frame


def test_score_is_flow_in_pixels_at_the_flow_size():
    # A 3 px pan at 64 px: about 3. The same pan at 128 px moving 6 px is measured at 64 px: again about 3.
    assert motion_score(_pan(3, 4, 64), fps=2, sample_fps=2, flow_short_side=64) == pytest.approx(
        3.0, abs=0.8
    )
    assert motion_score(_pan(6, 4, 128), fps=2, sample_fps=2, flow_short_side=64) == pytest.approx(
        3.0, abs=0.8
    )
    assert motion_score(_pan(3, 4, 64)[[0, 0, 0]], fps=2) < 0.05  # static
    assert np.isnan(motion_score(_pan(3, 2, 64), fps=8))  # one sample at 2 fps: undefined, like curation


def test_increasing_motion_gives_rho_one_and_reversed_minus_one():
    speeds = [0, 1, 2, 3, 4]
    videos = np.stack([_moving_square(s) for s in speeds])
    scores = motion_scores(videos, fps=2)
    assert np.all(np.diff(scores) > 0), scores
    buckets = [10, 60, 120, 180, 250]
    assert motion_fidelity(buckets, videos, fps=2) == pytest.approx(1.0)
    assert motion_fidelity(buckets[::-1], videos, fps=2) == pytest.approx(-1.0)


def test_float_channel_first_videos_and_sampling_rate():
    # (N, F, 3, H, W) floats as decode_latents returns, generated for 8 fps: every 4th frame is measured, so a
    # video moving 1 px per frame moves 4 px per measured step.
    videos = torch.from_numpy(np.stack([_moving_square(s / 4, frames=9) for s in (0, 1, 2)])).permute(
        0, 1, 4, 2, 3
    )
    videos = videos.float() / 255
    scores = motion_scores(videos, fps=8)
    assert np.all(np.diff(scores) > 0), scores
    assert motion_fidelity([0, 100, 200], videos, fps=8) == pytest.approx(1.0)
    assert np.isnan(motion_fidelity([5, 5, 5], videos, fps=8))
    with pytest.raises(ValueError):
        motion_fidelity([1, 2], videos, fps=8)


def test_generated_motion_measures_a_short_video_at_its_own_rate():
    # 4 frames generated for 7 fps: curation's 2 fps keeps one frame (NaN); consecutive frames give a number.
    videos = np.stack([_moving_square(s, frames=4) for s in (0, 2, 4)])
    assert np.isnan(motion_scores(videos, fps=7)).all()
    measured = generated_motion(videos)
    assert np.all(np.isfinite(measured)) and np.all(np.diff(measured) > 0), measured


def test_per_frame_sweep_is_not_fooled_by_clip_content():
    # Frame A shows a calm scene, frame B a busy one; each moves more when asked for more.
    buckets = [0, 255]
    scores = np.array([[0.1, 0.2], [5.0, 5.1]])
    assert motion_fidelity_per_frame(buckets, scores) == pytest.approx([1.0, 1.0])
    # One video per clip with buckets spread across clips (A asked 255, B asked 0) reads content as motion: -1.
    assert motion_fidelity([255, 0], [_moving_square(0.5), _moving_square(4)], fps=2) == pytest.approx(-1.0)
    # A frame whose motion does not change with the bucket has no rank correlation; it is NaN, not a failure.
    assert np.isnan(motion_fidelity_per_frame(buckets, [[1.0, 1.0]])[0])
    with pytest.raises(ValueError):
        motion_fidelity_per_frame(buckets, [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError):
        motion_fidelity_per_frame([5, 5], [[1.0, 2.0]])
