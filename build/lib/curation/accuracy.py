"""How well curation recovers a labelled corpus: cut detection, static-vs-moving and text-vs-clean separation.

Each predicted clip is matched to the truth shot it overlaps most; a clip's motion and text scores are then
compared across the truth labels. Separation is reported as the margin between the classes (positive means every
member of one class scores above every member of the other) and as the ROC AUC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from curation.cut_metrics import match_cuts, merge_counts
from curation.cuts import Cut


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def label_clips(clips: pd.DataFrame, shots: list[dict]) -> pd.DataFrame:
    """Attach the labels of the truth shot each clip overlaps most (and the overlap fraction)."""
    out = []
    for row in clips.to_dict("records"):
        best, best_overlap = None, 0
        for shot in shots:
            overlap = min(row["end_frame"], shot["end_frame"]) - max(row["start_frame"], shot["start_frame"])
            if overlap > best_overlap:
                best, best_overlap = shot, overlap
        length = row["end_frame"] - row["start_frame"]
        out.append({**row, "truth_motion": best["motion"] if best else None, "truth_text": best["text"] if best else None,
                    "truth_overlap": best_overlap / length if length else 0.0})
    return pd.DataFrame(out)


def separation(frame: pd.DataFrame, score: str, label: str, high: str, low: str) -> dict:
    """``high``-labelled clips should score above ``low``-labelled ones."""
    hi = frame.loc[frame[label] == high, score].dropna().to_numpy()
    lo = frame.loc[frame[label] == low, score].dropna().to_numpy()
    return {
        f"{high}_n": int(len(hi)), f"{low}_n": int(len(lo)),
        f"{high}_min": float(hi.min()) if len(hi) else float("nan"),
        f"{low}_max": float(lo.max()) if len(lo) else float("nan"),
        "margin": float(hi.min() - lo.max()) if len(hi) and len(lo) else float("nan"),
        "auc": auc(hi, lo),
    }


def evaluate(results: dict[str, pd.DataFrame], truth: dict, min_overlap: float = 0.8) -> dict:
    """``results``: file name -> its clips table rows. Returns cut metrics and score separations."""
    per_video, labelled = [], []
    for name, clips in results.items():
        t = truth["videos"][name]
        # A clip's start is a predicted cut; its `cut_in` is the kind the cascade gave it.
        pred = [Cut(int(f), kind, ()) for f, kind in zip(clips["start_frame"], clips["cut_in"]) if f > 0]
        per_video.append(match_cuts(pred, t["cuts"]))
        labelled.append(label_clips(clips, t["shots"]))
    cuts = merge_counts(per_video)
    frame = pd.concat(labelled, ignore_index=True)
    clean = frame[frame["truth_overlap"] >= min_overlap]  # clips that are mostly one truth shot
    return {
        "cuts": cuts,
        "motion": separation(clean, "motion_score", "truth_motion", "moving", "static"),
        "text": separation(clean, "text_area_ratio", "truth_text", "text", "clean"),
        "clips": int(len(frame)),
    }

