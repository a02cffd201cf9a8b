"""Score the accepted videos of an ingestion batch with a pool of worker processes; build the clips table.

Results are written per video under ``metadata/clips/<scoring_version>/<video_id>.parquet`` as soon as the video
is done, so a killed run resumes with the videos not scored yet and a rerun scores nothing. The scoring version
hashes every setting and model identity that changes a score; variant thresholds are not part of it, so changing
a threshold never recomputes a score.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from curation import ingest
from curation.clips_table import CLIPS_KEY, scoring_version, to_frame
from svdpipe.config import SvdpipeConfig
from svdpipe.storage import LocalStorage, Storage, open_storage

CLIPS_DIR = "metadata/clips"

_worker: dict = {}


def version_of(cfg: SvdpipeConfig) -> str:
    """Everything that changes a score: the curation settings (minus parallelism) and the seed of tiny models."""
    parts = cfg.curation.model_dump(mode="json", exclude={"workers"})
    return scoring_version({"curation": repr(parts), "seed": cfg.seed})


def result_key(version: str, video_id: str) -> str:
    return f"{CLIPS_DIR}/{version}/{video_id}.parquet"


def _init_worker(cfg_json: str, threads: int) -> None:
    import torch

    from curation.scoring import Scorers

    torch.set_num_threads(threads)
    cfg = SvdpipeConfig.model_validate_json(cfg_json)
    _worker.update(cfg=cfg, scorers=Scorers.load(cfg.curation, cfg.seed), root=open_storage(cfg.data_root))


def _score_one(args: tuple[dict, str, str]) -> str:
    """Score one video in a worker and store its rows; returns its video_id."""
    from curation.scoring import score_video

    video, version, batch = args
    cfg, root = _worker["cfg"], _worker["root"]
    with tempfile.TemporaryDirectory(prefix="svdpipe-score-") as tmp:
        if isinstance(root, LocalStorage):
            path = root.local_path(video["stored_key"])
        else:
            path = Path(tmp) / Path(video["stored_key"]).name
            root.download(video["stored_key"], path)
        rows = score_video(path, video, cfg.curation, _worker["scorers"])
    for row in rows:
        row.update(batch=batch, scoring_version=version)
    ingest.write_table(root, result_key(version, video["video_id"]), to_frame(rows))
    return video["video_id"]


def score_batch(root: Storage, batch: str, cfg: SvdpipeConfig, progress: bool = True) -> pd.DataFrame:
    """Score every accepted video of ``batch`` not scored yet under the current version; return its clips."""
    from tqdm import tqdm

    version = version_of(cfg)
    table = ingest.read_table(root, ingest.batch_key(batch, "videos.parquet"))
    videos = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in table[table["status"] == "accepted"].to_dict("records")
    ]
    todo = [v for v in videos if not root.exists(result_key(version, v["video_id"]))]
    workers = max(1, min(cfg.curation.workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    if todo:
        args = [(v, version, batch) for v in todo]
        bar = tqdm(total=len(videos), initial=len(videos) - len(todo), desc=f"curate {batch}", unit="video",
                   disable=not progress)
        ctx = multiprocessing.get_context("spawn")  # a forked child of a threaded parent (torch, Dagster) can hang
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(cfg.model_dump_json(), threads)) as pool:
            for _ in pool.map(_score_one, args):
                bar.update(1)
        bar.close()
    return read_clips(root, version, [v["video_id"] for v in videos])


def read_clips(root: Storage, version: str, video_ids: list[str]) -> pd.DataFrame:
    frames = [f for f in (ingest.read_optional(root, result_key(version, vid)) for vid in video_ids)
              if f is not None]
    return pd.concat(frames, ignore_index=True) if frames else to_frame([])


def consolidate(root: Storage, cfg: SvdpipeConfig) -> pd.DataFrame:
    """``metadata/clips.parquet``: the current version's clips of every accepted video in the videos table."""
    videos = ingest.read_table(root)
    accepted = videos.loc[videos["status"] == "accepted", "video_id"].tolist()
    frame = read_clips(root, version_of(cfg), accepted)
    frame = frame.sort_values(["video_id", "start_frame"], kind="stable").reset_index(drop=True)
    ingest.write_table(root, CLIPS_KEY, frame)
    return frame


def read_clips_table(root: Storage) -> pd.DataFrame:
    frame = ingest.read_optional(root, CLIPS_KEY)
    return to_frame([]) if frame is None else frame
