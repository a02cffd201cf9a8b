"""The schema of ``metadata/clips.parquet``: one row per detected shot of every accepted video.

Frame ranges are half-open, ``[start_frame, end_frame)``. Scores that cannot be computed for a clip (a shot too
short to hold two motion samples, say) are NaN, never guessed; a video that failed during decoding or scoring
keeps one row per shot found so far (or one row spanning the whole video) with ``error`` set.
"""

from __future__ import annotations

import hashlib

import pandas as pd

CLIPS_KEY = "metadata/clips.parquet"

# column -> pandas dtype. The first block is the data contract of docs/architecture.md; the rest is what else is useful.
CLIP_COLUMNS: dict[str, str] = {
    "clip_id": "string",
    "video_id": "string",
    "start_frame": "int64",
    "end_frame": "int64",
    "start_s": "float64",
    "end_s": "float64",
    "duration_s": "float64",
    "fps": "float64",
    "width": "int64",
    "height": "int64",
    "motion_score": "float64",  # mean optical-flow magnitude, pixels per sample step at the flow size
    "text_area_ratio": "float64",  # 0..1, union of text boxes over frame area, max over first/middle/last
    "aesthetic_score": "float64",
    "clip_text_similarity": "float64",  # cosine, -1..1, frames vs caption
    "caption": "string",
    # additions
    "num_frames": "int64",
    "cut_in": "string",  # how the clip starts: "start" (of the video), "hard" or "fade"
    "motion_series": "object",  # list[float]: flow magnitude per sample step inside the clip
    "text_area_per_frame": "object",  # list[float]: first, middle, last
    "score_frames": "object",  # list[int]: source frame indices of the first, middle and last sampled frames
    "caption_model": "string",
    "clip_model": "string",
    "scoring_version": "string",  # hash of everything that changes a score; a new one means rescoring
    "error": "string",  # "" when the clip was scored
    "batch": "string",
}


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    """Deterministic from the video and the frame range."""
    return f"{video_id}-{start_frame:07d}-{end_frame:07d}"


def to_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(CLIP_COLUMNS))
    for col, dtype in CLIP_COLUMNS.items():
        if dtype != "object":
            frame[col] = frame[col].astype(dtype)
    frame["error"] = frame["error"].fillna("")
    return frame


def scoring_version(parts: dict) -> str:
    """A short hash of the scoring settings and model identities that determine the scores."""
    text = repr(sorted(parts.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:12]
