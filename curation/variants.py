"""Select a curated dataset from the scored clips by a named variant: score first, filter later.

A variant never recomputes a score: it resolves its percentile bounds to absolute thresholds over the usable clips
(scored, long enough), applies every filter independently to that same pool, and keeps the clips that pass all.
The resolved thresholds and the count kept by each filter are part of the result, so a selection explains itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from svdpipe.config_schema import ScoreFilter, VariantConfig


@dataclass
class Selection:
    variant: str
    kept: pd.DataFrame
    pool: int  # usable clips the filters ran over
    total: int  # all clips in the table
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # score -> {"min": .., "max": ..}
    kept_by_filter: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "variant": self.variant, "clips_total": self.total, "clips_usable": self.pool,
            "clips_kept": int(len(self.kept)), "thresholds": self.thresholds, "kept_by_filter": self.kept_by_filter,
            "clip_ids_sha1": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """Changes exactly when the kept clips or the thresholds change."""
        text = json.dumps([sorted(self.kept["clip_id"].tolist()), self.thresholds], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def usable(clips: pd.DataFrame, variant: VariantConfig) -> pd.Series:
    return (clips["error"].fillna("") == "") & (clips["duration_s"] >= variant.min_duration_s)


def resolve(values: pd.Series, flt: ScoreFilter) -> dict[str, float]:
    """Absolute bounds for one filter: the tighter of its absolute and percentile bounds."""
    finite = values.dropna().to_numpy(dtype=float)
    lo = [flt.min] if flt.min is not None else []
    hi = [flt.max] if flt.max is not None else []
    if flt.drop_lowest_pct is not None and len(finite):
        lo.append(float(np.percentile(finite, flt.drop_lowest_pct)))
    if flt.drop_highest_pct is not None and len(finite):
        hi.append(float(np.percentile(finite, 100 - flt.drop_highest_pct)))
    bounds = {}
    if lo:
        bounds["min"] = max(lo)
    if hi:
        bounds["max"] = min(hi)
    return bounds


def passes(values: pd.Series, bounds: dict[str, float]) -> pd.Series:
    ok = values.notna()  # a clip without this score cannot pass a filter on it
    if "min" in bounds:
        ok &= values >= bounds["min"]
    if "max" in bounds:
        ok &= values <= bounds["max"]
    return ok


def select(clips: pd.DataFrame, name: str, variant: VariantConfig) -> Selection:
    pool = clips[usable(clips, variant)]
    keep = pd.Series(True, index=pool.index)
    thresholds, kept_by = {}, {}
    if variant.drop_duplicates:
        # A copy goes, the clip it copies stays (dedup marks only the later one of a pair).
        unique = pool["duplicate_of"].isna() if "duplicate_of" in pool else pd.Series(True, index=pool.index)
        kept_by["not_duplicate"] = int(unique.sum())
        keep &= unique
    for flt in variant.filters:
        bounds = resolve(pool[flt.score], flt)
        ok = passes(pool[flt.score], bounds)
        label = flt.score if flt.score not in thresholds else f"{flt.score}#{len(thresholds)}"
        thresholds[label], kept_by[label] = bounds, int(ok.sum())
        keep &= ok
    return Selection(name, pool[keep].reset_index(drop=True), int(len(pool)), int(len(clips)), thresholds, kept_by)
