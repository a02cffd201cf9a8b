"""Score one video: one decode, then cuts -> clips -> motion, text area, CLIP aesthetics, caption, text match.

Every detected shot becomes a row (the clips table of docs/architecture.md); nothing is dropped or split here. A failure while
decoding or scoring is recorded in the rows' ``error`` column and never raised to the caller.

Scoring is two parts, so that an engine can run them in different places: ``prepare_video`` (CPU: decode, cuts,
motion, the frames each clip's networks look at) and ``score_clips`` (the networks, batched over the clips of one
video or of many). ``score_video`` is both, for one video; the Ray engine runs the first as tasks and the second in
long-lived actors, with the same functions, so both engines write the same rows.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation.dedup import thumbnail_embedding
from curation.clips_table import clip_id
from curation.cuts import CutCascade, shots_from_cuts
from curation.decode import decode_once
from curation.motion import clip_motion, flow_magnitudes
from svdpipe.config_schema import CurationConfig

UNSCORED_SHORT = "unscored: shorter than one sample interval (no sampled frame inside)"


@dataclass
class Scorers:
    """The models, loaded once per worker process."""

    text: object
    clip: object
    captioner: object

    @classmethod
    def load(cls, cfg: CurationConfig, seed: int, device: str = "cpu", dtype: str = "float32") -> "Scorers":
        """Every network on ``device`` in ``dtype`` (``compute.device`` / ``compute.dtype``)."""
        from curation.captions import CocaCaptioner
        from curation.clip_models import inference_device
        from curation.clip_scores import ClipScorer
        from curation.text_area import TextAreaScorer

        device, _ = inference_device(device, dtype)
        return cls(TextAreaScorer(cfg.text, device, dtype=dtype), ClipScorer(cfg.clip, seed, device, dtype),
                   CocaCaptioner(cfg.caption, seed, device, dtype))

    def identity(self) -> dict[str, str]:
        return {"text": self.text.name, "clip": self.clip.name, "caption": self.captioner.name}


def away_from_fades(inside: np.ndarray, sample_frames: np.ndarray, start: int, end: int, fade_in: bool,
                    fade_out: bool, margin: int) -> np.ndarray:
    """Samples of a clip that are not in a dissolve at its ends (when any are left).

    A cut inside a dissolve leaves blended frames of the neighbouring shot at the clip's ends; scoring them would
    credit this clip with the other shot's text or looks.
    """
    keep = np.ones(len(inside), bool)
    if fade_in:
        keep &= sample_frames[inside] >= start + margin
    if fade_out:
        keep &= sample_frames[inside] < end - margin
    return inside[keep] if keep.any() else inside


def first_middle_last(positions: np.ndarray) -> list[int]:
    """Positions of the first, middle and last sample of a clip (repeats when it holds fewer than three)."""
    n = len(positions)
    return [int(positions[0]), int(positions[(n - 1) // 2]), int(positions[-1])]


def _base_row(video: dict, start: int, end: int, times: np.ndarray, width: int, height: int, cut_in: str) -> dict:
    """Times come from the decoded timestamps (``times[i]``: when frame i is shown); ``fps`` is the clip's rate."""
    start_s, end_s = float(times[start]), float(times[end])
    return {
        "clip_id": clip_id(video["video_id"], start, end), "video_id": video["video_id"],
        "start_frame": start, "end_frame": end, "start_s": start_s, "end_s": end_s,
        "duration_s": end_s - start_s, "fps": round((end - start) / (end_s - start_s), 6), "width": width, "height": height,
        "num_frames": end - start, "cut_in": cut_in, "error": "",
    }


@dataclass
class PreparedVideo:
    """The CPU part of one video's scoring: every clip row (cuts, motion), and the frames its networks score."""

    rows: list[dict]
    scored: list[int] = field(default_factory=list)  # indices of the rows the networks score
    frames: list[list[np.ndarray]] = field(default_factory=list)  # first, middle, last frame of each of those


def prepare_video(path: str | Path, video: dict, cfg: CurationConfig, identity: dict[str, str]) -> PreparedVideo:
    """Decode once, find the cuts, measure motion and pick the frames to score (``video``: its videos-table row)."""
    try:
        cascade = CutCascade(cfg.cuts, float(video["fps"]))
        decoded = decode_once(path, cfg.sample_fps, cfg.score_short_side, cfg.motion.flow_short_side,
                              cfg.cuts.detect_width, cascade.push)
        cuts = cascade.finish(decoded.num_frames)
    except Exception as e:  # noqa: BLE001 - a broken video must not stop the others
        n, fps = int(video["num_frames"]), float(video["fps"])
        row = _base_row(video, 0, n, np.arange(n + 1) / fps, int(video["width"]), int(video["height"]), "start")
        return PreparedVideo([{**row, "error": f"decode failed: {type(e).__name__}: {e}"}])

    fps, samples = decoded.fps, decoded.samples
    sample_frames = np.array([s.index for s in samples])
    steps = flow_magnitudes([s.gray for s in samples])
    kinds = {c.frame: c.kind for c in cuts}
    prepared = PreparedVideo([])
    for start, end in shots_from_cuts(cuts, decoded.num_frames):
        row = _base_row(video, start, end, decoded.times, decoded.width, decoded.height, kinds.get(start, "start"))
        row.update(clip_model=identity["clip"], caption_model=identity["caption"])
        prepared.rows.append(row)
        inside = np.flatnonzero((sample_frames >= start) & (sample_frames < end))
        if len(inside) == 0:
            row["error"] = UNSCORED_SHORT
            continue
        try:
            row["motion_score"], row["motion_series"] = clip_motion(sample_frames, steps, start, end)
            margin = int(round(cfg.cuts.fade_window_s * fps / 2))
            clean = away_from_fades(inside, sample_frames, start, end, kinds.get(start) == "fade",
                                    kinds.get(end) == "fade", margin)
            picks = first_middle_last(clean)
        except Exception as e:  # noqa: BLE001 - record and go on with the next clip
            row["error"] = _failure(e)
            continue
        row["score_frames"] = [int(sample_frames[i]) for i in picks]
        prepared.scored.append(len(prepared.rows) - 1)
        prepared.frames.append([samples[i].rgb for i in picks])
    return prepared


def _failure(e: Exception) -> str:
    return f"scoring failed: {type(e).__name__}: {e} | {traceback.format_exc(limit=2)[-300:]}"


def score_clips(clips: list[list[np.ndarray]], scorers: Scorers) -> list[dict]:
    """The network scores of many clips (each a list of frames), in batched passes over all of them.

    Returns one dict per clip: its score fields, or ``{"error": ...}``. When a batched pass fails, the clips are
    scored one by one, so a bad clip gets its own error and the others their scores.
    """
    try:
        return _score_together(clips, scorers)
    except Exception as e:  # noqa: BLE001 - find the clip that failed
        if len(clips) == 1:
            return [{"error": _failure(e)}]
        return [score_clips([c], scorers)[0] for c in clips]


def _score_together(clips: list[list[np.ndarray]], scorers: Scorers) -> list[dict]:
    if not clips:
        return []
    ratios = scorers.text.frame_ratios([f for frames in clips for f in frames])
    captions = scorers.captioner.captions(clips)
    looks = scorers.clip.clip_looks(clips, captions)
    out, start = [], 0
    for frames, caption, (aesthetic, similarity, embedding) in zip(clips, captions, looks):
        per_frame = ratios[start : start + len(frames)]
        start += len(frames)
        # Both embeddings are kept for near-duplicate removal (curation/dedup.py picks one by config).
        out.append({"text_area_ratio": max(per_frame), "text_area_per_frame": per_frame, "caption": caption,
                    "aesthetic_score": aesthetic, "clip_text_similarity": similarity,
                    "image_embedding": embedding.astype(float).tolist(),
                    "thumbnail_embedding": thumbnail_embedding(frames).astype(float).tolist()})
    return out


def finish_rows(prepared: PreparedVideo, scores: list[dict]) -> list[dict]:
    """The video's clip rows with the network scores of its scored clips filled in."""
    rows = [dict(r) for r in prepared.rows]
    for i, fields in zip(prepared.scored, scores):
        rows[i].update(fields)
    return rows


def score_video(path: str | Path, video: dict, cfg: CurationConfig, scorers: Scorers) -> list[dict]:
    """All clip rows of one accepted video (``video`` is its row of the videos table)."""
    prepared = prepare_video(path, video, cfg, scorers.identity())
    return finish_rows(prepared, score_clips(prepared.frames, scorers))
