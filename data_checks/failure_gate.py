"""The failure gate on the clips table: a scorer bug must not quietly become a dataset of error rows.

A clip's scoring *failed* when its ``error`` says so (a decode failure, an exception in a scorer); a shot too short
to hold a sampled frame is ``unscored`` by design and is not a failure. The gate passes while the failed share is
at most ``checks.max_error_fraction``; its outcome lists every video with failed clips and why, so the check in
the UI says what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from data_checks.suites import ValidationOutcome, validate

UNSCORED = "unscored"  # the prefix of rows that were not scored on purpose (curation.scoring)
MAX_VIDEOS = 50  # videos listed; the counts cover all of them


def scoring_failed(clips: pd.DataFrame) -> pd.Series:
    """True for each clip whose scoring failed."""
    error = clips["error"].fillna("").astype(str)
    return (error != "") & ~error.str.startswith(UNSCORED)


@dataclass(frozen=True, eq=False)
class GateOutcome:
    passed: bool
    clips: int
    failed: int
    max_fraction: float
    by_video: pd.DataFrame  # video_id, [source_uri], failed, clips, reason (the first failed clip's error)
    validation: ValidationOutcome | None  # GX's result (None for an empty table, which passes)

    @property
    def fraction(self) -> float:
        return self.failed / self.clips if self.clips else 0.0

    def summary(self) -> str:
        verdict = "at most" if self.passed else "over"
        return (f"{self.failed} of {self.clips} clips failed scoring ({self.fraction:.2%}), {verdict} "
                f"checks.max_error_fraction = {self.max_fraction:.2%}")

    def by_video_markdown(self) -> str:
        if self.by_video.empty:
            return "no clip failed scoring"
        shown = self.by_video.head(MAX_VIDEOS).astype(object)
        shown["reason"] = shown["reason"].map(lambda r: " ".join(str(r).split()).replace("|", "/")[:200])
        more = len(self.by_video) - len(shown)
        return shown.to_markdown(index=False) + (f"\n\n… and {more} more videos" if more > 0 else "")


def failure_gate(clips: pd.DataFrame, max_fraction: float, videos: pd.DataFrame | None = None) -> GateOutcome:
    """Judge ``clips`` (the clips table); ``videos`` (the videos table) adds each failing video's source."""
    failed = scoring_failed(clips)
    grouped = clips.assign(_failed=failed).groupby("video_id", sort=True)
    by_video = pd.DataFrame({"failed": grouped["_failed"].sum().astype(int), "clips": grouped.size()})
    by_video = by_video[by_video["failed"] > 0]
    first_error = clips[failed].groupby("video_id", sort=True)["error"].first()
    by_video = by_video.assign(reason=first_error.reindex(by_video.index)).reset_index()
    if videos is not None and not by_video.empty:
        by_video.insert(1, "source_uri", by_video["video_id"].map(
            videos.drop_duplicates("video_id").set_index("video_id")["source_uri"]))
    by_video = by_video.sort_values(["failed", "video_id"], ascending=[False, True], kind="stable")
    if clips.empty:
        return GateOutcome(True, 0, 0, max_fraction, by_video, None)
    outcome = validate(clips, "clip_failures", {"max_error_fraction": max_fraction})
    return GateOutcome(outcome.success, len(clips), int(failed.sum()), max_fraction, by_video.reset_index(drop=True),
                       outcome)
