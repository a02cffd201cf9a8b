"""Which way each evaluation metric is better: the one table the comparison and the registration rule read.

``better``: "lower", "higher", or None for a count or a context figure that never ranks (``n_videos``,
``motion_magnitude``). ``needs_motion``: a frozen video maximizes the metric (temporal consistency is 1 for a
still image), so its figure only counts when the samples move: generated motion magnitude at least
``evaluation.static_motion_ratio`` times the real clips' (``static_reason``). Uncertainty travels beside a
metric as ``se/<metric>`` (standard error over clips, videos or conditioning frames) and its sample count as
``n/<metric>``; neither is a metric of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Direction", "better", "direction", "is_uncertainty", "not_worse", "rank_blocker", "static_reason"]

SE, COUNT = "se/", "n/"


@dataclass(frozen=True)
class Direction:
    better: Literal["lower", "higher"] | None
    meaning: str
    needs_motion: bool = False


# Exact names, then prefixes ending in "_" or "/"; the first match wins.
TABLE: dict[str, Direction] = {
    "val_loss": Direction("lower", "held-out EDM loss at fixed sigmas and noise"),
    "fvd": Direction("lower", "Frechet distance of I3D features, generated vs. real"),
    "fd_": Direction("lower", "Frechet distance of stand-in features, generated vs. real"),
    "motion_fidelity": Direction("higher", "rank correlation of requested bucket and measured motion, per frame"),
    "temporal_consistency": Direction("higher", "CLIP similarity of consecutive generated frames", needs_motion=True),
    "motion_magnitude": Direction(None, "mean measured motion of the generated videos (context)"),
    "motion_magnitude_real": Direction(None, "mean measured motion of the real clips (context)"),
    "n_": Direction(None, "a count"),
}


def is_uncertainty(key: str) -> bool:
    return key.startswith((SE, COUNT))


def direction(metric: str) -> Direction | None:
    """The row of ``TABLE`` for ``metric`` (``val_loss/sigma_0.1`` reads ``val_loss``), None if unknown."""
    if metric in TABLE:
        return TABLE[metric]
    base = metric.split("/", 1)[0]
    if base in TABLE:
        return TABLE[base]
    return next((d for p, d in TABLE.items() if p.endswith("_") and metric.startswith(p)), None)


def better(metric: str) -> str | None:
    d = direction(metric)
    return d.better if d else None


def not_worse(metric: str, candidate: float, current: float) -> bool:
    """``candidate`` is at least as good as ``current`` (the metric must have a direction)."""
    b = better(metric)
    if b is None:
        raise ValueError(f"{metric!r} has no better direction (a count or context figure): it cannot rank models")
    return candidate <= current if b == "lower" else candidate >= current


def static_reason(metrics: Mapping[str, float], ratio: float) -> str | None:
    """Why the samples count as static (generated motion < ratio x real motion), or None if they move."""
    gen, real = metrics.get("motion_magnitude"), metrics.get("motion_magnitude_real")
    if gen is None or real is None or math.isnan(gen) or math.isnan(real):
        return None
    if gen < ratio * real:
        return f"static samples: generated motion {gen:.3g} < {ratio:g} x real {real:.3g}"
    return None


def rank_blocker(metric: str, metrics: Mapping[str, float], ratio: float) -> str | None:
    """Why ``metrics[metric]`` may not rank (no direction, missing, NaN, or static samples), else None."""
    d = direction(metric)
    if d is None or d.better is None:
        return f"{metric} has no better direction"
    value = metrics.get(metric)
    if value is None or math.isnan(float(value)):
        return f"{metric} is {'missing' if value is None else 'NaN'}"
    if d.needs_motion:
        figures = [metrics.get(k) for k in ("motion_magnitude", "motion_magnitude_real")]
        if any(v is None or math.isnan(float(v)) for v in figures):
            return f"{metric} needs motion_magnitude and motion_magnitude_real beside it (a frozen video maximizes it)"
        return static_reason(metrics, ratio)
    return None
