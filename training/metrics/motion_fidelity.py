"""Motion fidelity: does a generated video move as much as its motion bucket asked for?

SVD conditions on a motion bucket derived from the curation motion score (Blattmann et al. 2023, Sec. 4;
``training.conditioning.motion_bucket``). Generated videos are measured with the curation scorer
(``curation.motion``: Farneback flow on grayscale frames resized to ``curation.motion.flow_short_side``, the mean
magnitude), and the metric is Spearman's rank correlation between requested buckets and measured motion.

Per conditioning frame (``motion_fidelity_per_frame``): the same first frame and the same noise are sampled with
buckets b_1 < ... < b_B, and rho is computed over those B videos; the metric is the mean of rho over frames. A
correlation across *different* clips would let clip content (a busy scene moves more whatever was asked) stand in
for the requested motion; sweeping the bucket for one frame isolates it. Ranks make it independent of the
(monotone, configurable) bucket mapping: 1 means more requested motion always gave more measured motion.

A generated video is short (4 frames in the tiny profile, 14-25 in SVD's), too short for curation's 2 fps, so
``generated_motion`` measures between every pair of consecutive generated frames (the generated rate).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.stats import spearmanr

from curation.decode import scaled_size
from curation.motion import flow_magnitudes
from svdpipe.config_schema import CurationConfig, MotionConfig
from training.video_io import to_uint8_frames

__all__ = ["generated_motion", "motion_fidelity", "motion_fidelity_per_frame", "motion_score", "motion_scores",
           "sample_indices"]

# The curation defaults, so that generated and training clips are measured alike unless configured otherwise.
SAMPLE_FPS: float = CurationConfig.model_fields["sample_fps"].default
FLOW_SHORT_SIDE: int = MotionConfig.model_fields["flow_short_side"].default


def sample_indices(num_frames: int, fps: float, sample_fps: float = SAMPLE_FPS) -> list[int]:
    """Frames kept at ``sample_fps``: round(k * max(fps / sample_fps, 1)), the rule of ``curation.decode``."""
    step = max(fps / sample_fps, 1.0)
    out, k = [], 0
    while (i := round(k * step)) < num_frames:
        out.append(i)
        k += 1
    return out


def motion_score(
    video, fps: float, *, sample_fps: float = SAMPLE_FPS, flow_short_side: int = FLOW_SHORT_SIDE
) -> float:
    """Curation motion score of one video ((F, H, W, 3) or (F, 3, H, W), uint8 or float in [0, 1]).

    NaN when fewer than two frames are sampled (as ``curation.motion.clip_motion`` gives for a too-short clip).
    """
    frames = to_uint8_frames(video)
    h, w = frames.shape[1:3]
    fw, fh = scaled_size(w, h, short_side=flow_short_side)
    grays = [
        cv2.resize(cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
        for i in sample_indices(len(frames), fps, sample_fps)
    ]
    steps = flow_magnitudes(grays)
    return float(steps.mean()) if len(steps) else float("nan")


def motion_scores(videos, fps: float | Sequence[float], **kw) -> np.ndarray:
    """``motion_score`` of each video; ``fps`` is one rate for all or one per video."""
    videos = list(videos)
    rates = np.broadcast_to(np.asarray(fps, np.float64), (len(videos),))
    return np.array([motion_score(v, float(r), **kw) for v, r in zip(videos, rates)], np.float64)


def motion_fidelity(requested_buckets: Sequence[float], videos, fps: float | Sequence[float], **kw) -> float:
    """Spearman rho between the requested motion buckets and the generated videos' curation motion scores.

    ``videos``: (N, F, 3, H, W) as ``training.sampling.decode_latents`` returns, or a list of videos; ``fps``:
    the frame rate the videos were generated for. NaN if either side is constant (rho is undefined).
    """
    buckets = np.asarray(requested_buckets, np.float64)
    scores = motion_scores(videos, fps, **kw)
    if len(buckets) != len(scores):
        raise ValueError(f"{len(buckets)} buckets for {len(scores)} videos")
    if len(scores) < 2:
        raise ValueError("motion fidelity needs at least two videos")
    if np.isnan(scores).any():
        raise ValueError("a video is too short to measure motion at the sampling rate")
    if np.ptp(buckets) == 0 or np.ptp(scores) == 0:
        return float("nan")
    return float(spearmanr(buckets, scores).statistic)


def generated_motion(videos, flow_short_side: int = FLOW_SHORT_SIDE) -> np.ndarray:
    """``motion_score`` of each video between every pair of consecutive frames (the generated rate)."""
    return motion_scores(videos, 1.0, sample_fps=1.0, flow_short_side=flow_short_side)


def motion_fidelity_per_frame(buckets: Sequence[float], scores) -> np.ndarray:
    """Spearman rho per conditioning frame: ``scores[k, j]`` is the motion measured on the video generated from
    frame k with bucket ``buckets[j]`` (same frame, same noise). NaN for a frame whose measured motion is
    constant or undefined (rho is undefined there)."""
    b = np.asarray(buckets, np.float64)
    s = np.atleast_2d(np.asarray(scores, np.float64))
    if s.shape[1] != len(b):
        raise ValueError(f"{len(b)} buckets for {s.shape[1]} videos per frame")
    if len(b) < 2 or np.ptp(b) == 0:
        raise ValueError(f"a sweep needs at least two different buckets, got {list(b)}")
    out = np.full(len(s), np.nan)
    for k, row in enumerate(s):
        if not np.isnan(row).any() and np.ptp(row) > 0:
            out[k] = float(spearmanr(b, row).statistic)
    return out
