"""Motion fidelity: does a generated video move as much as its motion bucket asked for?

SVD conditions on a motion bucket derived from the curation motion score (Blattmann et al. 2023, Sec. 4;
``training.conditioning.motion_bucket``). This metric measures the generated videos with the *same* scorer the
curation step uses (``curation.motion``: Farneback flow between frames sampled at ``curation.sample_fps``, on
grayscale frames resized to ``curation.motion.flow_short_side``; the clip's score is the mean magnitude) and
reports Spearman's rank correlation between requested buckets and measured scores. Ranks make it independent of
the (monotone, configurable) bucket mapping: 1 means more requested motion always gave more measured motion.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.stats import spearmanr

from curation.decode import scaled_size
from curation.motion import flow_magnitudes
from svdpipe.config import CurationConfig, MotionConfig
from training.video_io import to_uint8_frames

__all__ = ["motion_fidelity", "motion_score", "motion_scores", "sample_indices"]

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
