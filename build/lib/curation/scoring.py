"""Score one video: one decode, then cuts -> clips -> motion, text area, CLIP aesthetics, caption, text match.

Every detected shot becomes a row (the clips table of docs/architecture.md); nothing is dropped or split here. A failure while
decoding or scoring is recorded in the rows' ``error`` column and never raised to the caller.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.clips_table import clip_id
from curation.cuts import CutCascade, shots_from_cuts
from curation.decode import decode_once
from curation.motion import clip_motion, flow_magnitudes
from svdpipe.config import CurationConfig

UNSCORED_SHORT = "unscored: shorter than one sample interval (no sampled frame inside)"


@dataclass
class Scorers:
    """The models, loaded once per worker process."""

    text: object
    clip: object
    captioner: object

    @classmethod
    def load(cls, cfg: CurationConfig, seed: int) -> "Scorers":
        from curation.captions import build_captioners
        from curation.clip_scores import ClipScorer
        from curation.text_area import TextAreaScorer

        return cls(TextAreaScorer(cfg.text), ClipScorer(cfg.clip, seed=seed), build_captioners(cfg.caption, seed)["coca"])

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


def _base_row(video: dict, start: int, end: int, fps: float, width: int, height: int, cut_in: str) -> dict:
    return {
        "clip_id": clip_id(video["video_id"], start, end), "video_id": video["video_id"],
        "start_frame": start, "end_frame": end, "start_s": start / fps, "end_s": end / fps,
        "duration_s": (end - start) / fps, "fps": fps, "width": width, "height": height, "num_frames": end - start,
        "cut_in": cut_in, "error": "",
    }


def score_video(path: str | Path, video: dict, cfg: CurationConfig, scorers: Scorers) -> list[dict]:
    """All clip rows of one accepted video (``video`` is its row of the videos table)."""
    try:
        cascade = CutCascade(cfg.cuts, float(video["fps"]))
        decoded = decode_once(path, cfg.sample_fps, cfg.score_short_side, cfg.motion.flow_short_side,
                              cfg.cuts.detect_width, cascade.push)
        cuts = cascade.finish(decoded.num_frames)
    except Exception as e:  # noqa: BLE001 - a broken video must not stop the others
        n, fps = int(video["num_frames"]), float(video["fps"])
        row = _base_row(video, 0, n, fps, int(video["width"]), int(video["height"]), "start")
        return [{**row, "error": f"decode failed: {type(e).__name__}: {e}"}]

    fps, samples = decoded.fps, decoded.samples
    sample_frames = np.array([s.index for s in samples])
    steps = flow_magnitudes([s.gray for s in samples])
    kinds = {c.frame: c.kind for c in cuts}
    ident = scorers.identity()
    rows = []
    for start, end in shots_from_cuts(cuts, decoded.num_frames):
        row = _base_row(video, start, end, fps, decoded.width, decoded.height, kinds.get(start, "start"))
        row.update(clip_model=ident["clip"], caption_model=ident["caption"])
        inside = np.flatnonzero((sample_frames >= start) & (sample_frames < end))
        if len(inside) == 0:
            rows.append({**row, "error": UNSCORED_SHORT})
            continue
        try:
            row["motion_score"], row["motion_series"] = clip_motion(sample_frames, steps, start, end)
            margin = int(round(cfg.cuts.fade_window_s * fps / 2))
            clean = away_from_fades(inside, sample_frames, start, end, kinds.get(start) == "fade",
                                    kinds.get(end) == "fade", margin)
            picks = first_middle_last(clean)
            frames = [samples[i].rgb for i in picks]
            row["score_frames"] = [int(sample_frames[i]) for i in picks]
            row["text_area_ratio"], row["text_area_per_frame"] = scorers.text.score(frames)
            emb = scorers.clip.embed_images(frames)
            row["aesthetic_score"] = scorers.clip.aesthetic(emb)
            row["caption"] = scorers.captioner.caption(frames)
            row["clip_text_similarity"] = scorers.clip.text_similarity(emb, row["caption"])
        except Exception as e:  # noqa: BLE001 - record and go on with the next clip
            row["error"] = f"scoring failed: {type(e).__name__}: {e} | {traceback.format_exc(limit=2)[-300:]}"
        rows.append(row)
    return rows
