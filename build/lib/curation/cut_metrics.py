"""Cut accuracy against a labelled truth (``truth.json`` of the sample corpus).

A hard cut is found when a predicted cut lies within ``tol`` frames of its truth frame; a fade (a transition with
truth ``start``..``end``) when a predicted cut lies in ``[start - tol, end + tol]``. Each predicted cut matches at
most one truth cut and each truth cut at most one prediction. True positives and misses take the truth's kind;
a false positive takes its predicted kind (a bare frame number has none, so it counts in ``overall`` only).
"""

from __future__ import annotations

KINDS = ("hard", "fade")


def _window(cut: dict, tol: int) -> tuple[int, int]:
    if cut["kind"] == "fade":
        return cut["start"] - tol, cut["end"] + tol
    return cut["frame"] - tol, cut["frame"] + tol


def _scores(tp: int, fp: int, fn: int) -> dict:
    # No prediction means no false alarm (precision 1); nothing to find means nothing missed (recall 1).
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def match_cuts(pred: list, truth_cuts: list[dict], tol: int = 2) -> dict:
    """Match predictions (``Cut`` objects or frame numbers) to truth cuts; per-kind and overall counts and scores.

    Returns ``{"hard": {...}, "fade": {...}, "overall": {...}, "matches": [(pred_frame, truth_frame), ...]}`` where
    each score dict has ``tp, fp, fn, precision, recall, f1``.
    """
    frames = [(int(p), None) if isinstance(p, int) else (int(p.frame), p.kind) for p in pred]
    order = sorted(range(len(frames)), key=lambda i: frames[i][0])
    windows = sorted((_window(c, tol) + (j,) for j, c in enumerate(truth_cuts)), key=lambda w: (w[1], w[0]))
    # Greedy by window end, each taking the earliest free prediction inside it: a maximum matching for points
    # against intervals, so an overlap of windows never costs a match that another assignment would keep.
    used = [False] * len(frames)
    matched_truth: dict[int, int] = {}
    for lo, hi, j in windows:
        for i in order:
            f = frames[i][0]
            if f > hi:
                break
            if not used[i] and f >= lo:
                used[i] = True
                matched_truth[j] = i
                break
    counts = {k: {"tp": 0, "fp": 0, "fn": 0} for k in (*KINDS, "overall")}
    for j, cut in enumerate(truth_cuts):
        key = "tp" if j in matched_truth else "fn"
        counts[cut["kind"]][key] += 1
        counts["overall"][key] += 1
    for i, (_, kind) in enumerate(frames):
        if not used[i]:
            counts["overall"]["fp"] += 1
            if kind in KINDS:
                counts[kind]["fp"] += 1
    out = {k: _scores(**v) for k, v in counts.items()}
    out["matches"] = sorted((frames[i][0], truth_cuts[j]["frame"]) for j, i in matched_truth.items())
    return out


def merge_counts(results: list[dict]) -> dict:
    """Pool the counts of several ``match_cuts`` results (several videos) and score the totals."""
    out = {}
    for k in (*KINDS, "overall"):
        tp, fp, fn = (sum(r[k][c] for r in results) for c in ("tp", "fp", "fn"))
        out[k] = _scores(tp, fp, fn)
    return out
