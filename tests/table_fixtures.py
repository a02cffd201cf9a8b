"""Tables for the data-check and asset-check tests: a clean clips table, a corrupted copy, a real videos table."""

import math

import pandas as pd
import pytest

from curation import ingest
from curation.clips_table import clip_id, to_frame
from curation.sample_corpus import make_sample_corpus
from svdpipe.config_schema import IngestConfig
from svdpipe.sources import list_inputs
from svdpipe.storage import open_storage

FPS = 24.0
# video -> shots as half-open frame ranges; adjacent shots share a boundary frame index, which is not an overlap.
SHOTS = {"vid_a": [(0, 48), (48, 100), (100, 130)], "vid_b": [(0, 48), (48, 96), (96, 97)],
         "vid_c": [(0, 60), (60, 120)]}


def _row(video: str, start: int, end: int, **extra) -> dict:
    n = end - start
    row = dict(clip_id=clip_id(video, start, end), video_id=video, start_frame=start, end_frame=end,
               start_s=start / FPS, end_s=end / FPS, duration_s=n / FPS, fps=FPS, width=192, height=108,
               motion_score=0.8 if n > 12 else math.nan,  # a one-frame shot has no flow: NaN is allowed
               text_area_ratio=0.02, aesthetic_score=4.5, clip_text_similarity=0.21, caption="a red ball rolls",
               num_frames=n, cut_in="start" if start == 0 else "hard", motion_series=[0.8],
               text_area_per_frame=[0.02, 0.01, 0.0], score_frames=[start, (start + end) // 2, end - 1],
               caption_model="coca-tiny", clip_model="clip-tiny", scoring_version="abc123", error="", batch="b1")
    row.update(extra)
    return row


def make_clips() -> pd.DataFrame:
    rows = [_row(v, s, e) for v, shots in SHOTS.items() for s, e in shots]
    # A video that failed while decoding: one row spanning it, the error set, no scores and no caption.
    rows.append(_row("vid_d", 0, 240, motion_score=math.nan, text_area_ratio=math.nan, aesthetic_score=math.nan,
                     clip_text_similarity=math.nan, caption="", error="decode error at frame 131"))
    return to_frame(rows)


def _move(frame: pd.DataFrame, i: int, start: int, end: int) -> None:
    """Give row i a new frame range with every derived column consistent, so only the range itself is wrong."""
    video = frame.at[i, "video_id"]
    frame.loc[i, ["start_frame", "end_frame", "num_frames"]] = [start, end, end - start]
    frame.loc[i, ["start_s", "end_s"]] = [start / FPS, end / FPS]
    frame.at[i, "duration_s"] = max(end - start, 1) / FPS
    frame.at[i, "clip_id"] = clip_id(video, start, end)


def corrupt(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, set[int]]]:
    """The issue's corruptions; returns the table and, per failing expectation label, the rows it must report."""
    bad = frame.copy()
    bad.at[1, "clip_id"] = bad.at[0, "clip_id"]  # duplicate id
    _move(bad, 2, 130, 130)  # end <= start (empty range)
    _move(bad, 4, 40, 96)  # vid_b: starts inside [0, 48)
    bad.at[6, "caption"] = ""  # missing caption on a clip scored without error
    bad.at[7, "text_area_ratio"] = 1.7
    return bad, {
        "clip_id unique": {0, 1},
        "end_frame > start_frame": {2},
        "no overlapping clips within a video": {3, 4},
        "caption non-empty where no error": {6},
        "text_area_ratio in [0, 1]": {7},
    }


@pytest.fixture
def clips_frame() -> pd.DataFrame:
    return make_clips()


@pytest.fixture
def corrupted_clips() -> tuple[pd.DataFrame, dict[str, set[int]]]:
    return corrupt(make_clips())


@pytest.fixture(scope="session")
def ingested_root(tmp_path_factory):
    """A data root holding a real videos table: a small generated corpus (2 videos plus broken inputs) ingested."""
    tmp = tmp_path_factory.mktemp("videos_table")
    make_sample_corpus(tmp / "corpus", seed=5, videos=2, seconds=4, width=192, height=108)
    root = open_storage(tmp / "root")
    cfg = IngestConfig(workers=1)
    todo, _ = ingest.plan_batches(root, list_inputs(str(tmp / "corpus"), cfg.ignore))
    for batch in todo:
        ingest.ingest_batch(root, batch, cfg, progress=False)
    ingest.consolidate(root)
    return tmp / "root"
