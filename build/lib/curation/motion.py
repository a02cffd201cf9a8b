"""Motion score: dense optical flow (Farneback) between frames sampled at a low, fixed rate.

SVD (Sec. 3.1, App. C) computes Farneback flow at 2 fps and filters clips whose mean flow magnitude is low.
Flow is computed on grayscale frames resized to a fixed short side (``motion.flow_short_side``), so the score is
in pixels per sample step *at that size* and comparable across source resolutions.
"""

from __future__ import annotations

import cv2
import numpy as np

# OpenCV's documented defaults for Farneback, a good fit for small frames.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def flow_magnitudes(grays: list[np.ndarray]) -> np.ndarray:
    """Mean flow magnitude |u| between each consecutive pair of frames; length ``len(grays) - 1``."""
    out = np.empty(max(len(grays) - 1, 0), np.float64)
    for i in range(len(grays) - 1):
        flow = cv2.calcOpticalFlowFarneback(grays[i], grays[i + 1], None, **_FARNEBACK)
        out[i] = float(np.linalg.norm(flow, axis=2).mean())
    return out


def clip_motion(sample_frames: np.ndarray, steps: np.ndarray, start: int, end: int) -> tuple[float, list[float]]:
    """Motion of the clip ``[start, end)``: the mean over the flow steps whose two frames both lie inside it.

    ``sample_frames[i]`` is the source index of sample i and ``steps[i]`` the flow from sample i to i+1. Steps
    that straddle a cut are never counted. NaN when the clip holds fewer than two samples.
    """
    inside = (sample_frames[:-1] >= start) & (sample_frames[1:] < end)
    series = steps[inside]
    return (float(series.mean()) if len(series) else float("nan")), [float(v) for v in series]
