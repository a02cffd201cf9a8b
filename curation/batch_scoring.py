"""Score the accepted videos of an ingestion batch on an engine; build the clips table.

``compute.engine`` picks where the per-video work runs: ``local``, a pool of worker processes on this machine, or
``ray``, a Ray cluster (``curation.ray_engine``). Both run the same scoring functions and write results here, per
video under ``metadata/clips/<scoring_version>/<video_id>.parquet`` as soon as the video is done, so a killed run
resumes with the videos not scored yet and a rerun scores nothing, whichever engine ran before. The scoring version
hashes every setting and model identity that changes a score; variant thresholds, parallelism, batch sizes and the
engine are not part of it, so changing them never recomputes a score.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from curation import ingest
from curation.clips_table import CLIPS_KEY, scoring_version, to_frame
from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import LocalStorage, Storage, open_storage

CLIPS_DIR = "metadata/clips"

_worker: dict = {}


# Settings that change how fast scores come, never what they are.
_NOT_SCORES = {"workers": True, "ray_batch_clips": True, "ray_scorers": True,
               **{net: {"batch_size": True} for net in ("text", "clip", "caption")}}


def version_of(cfg: SvdpipeConfig) -> str:
    """Everything that changes a score: the curation settings (minus parallelism), the seed of tiny models, and the
    networks' precision when it is not float32."""
    parts = cfg.curation.model_dump(mode="json", exclude=_NOT_SCORES)
    # "rows" names what a score file holds: a file written before clips carried their embeddings is rescored.
    version = {"curation": repr(parts), "seed": cfg.seed, "rows": "embeddings"}
    if cfg.compute.dtype != "float32":
        version["dtype"] = cfg.compute.dtype
    return scoring_version(version)


def result_key(version: str, video_id: str) -> str:
    return f"{CLIPS_DIR}/{version}/{video_id}.parquet"


@contextmanager
def video_file(root: Storage, video: dict) -> Iterator[Path]:
    """A local path to the video's stored file: in place on a local root, else a temporary download."""
    if isinstance(root, LocalStorage):
        yield root.local_path(video["stored_key"])
        return
    with tempfile.TemporaryDirectory(prefix="svdpipe-score-") as tmp:
        path = Path(tmp) / Path(video["stored_key"]).name
        root.download(video["stored_key"], path)
        yield path


def store_rows(root: Storage, video: dict, rows: list[dict], version: str, batch: str) -> str:
    """Write one video's clip rows (what both engines do when a video is done); returns its video_id."""
    for row in rows:
        row.update(batch=batch, scoring_version=version)
    ingest.write_table(root, result_key(version, video["video_id"]), to_frame(rows))
    return video["video_id"]


def load_scorers(cfg: SvdpipeConfig):
    from curation.scoring import Scorers

    return Scorers.load(cfg.curation, cfg.seed, cfg.compute.device, cfg.compute.dtype)


def _init_worker(cfg_json: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    cfg = SvdpipeConfig.model_validate_json(cfg_json)
    _worker.update(cfg=cfg, scorers=load_scorers(cfg), root=open_storage(cfg.data_root))


def _score_one(args: tuple[dict, str, str]) -> str:
    """Score one video in a worker and store its rows; returns its video_id."""
    from curation.scoring import score_video

    video, version, batch = args
    cfg, root = _worker["cfg"], _worker["root"]
    with video_file(root, video) as path:
        rows = score_video(path, video, cfg.curation, _worker["scorers"])
    return store_rows(root, video, rows, version, batch)


@dataclass
class ScoredBatch:
    clips: pd.DataFrame  # the batch's clip rows, scored now or before
    engine: str  # compute.engine that scored what was left to score
    nodes: int  # machines it ran on: 1 for the local engine, the Ray cluster's alive nodes, 0 if nothing to score
    scored_now: int  # videos scored by this call (0 on a rerun)


def score_batch(root: Storage, batch: str, cfg: SvdpipeConfig, progress: bool = True,
                on_done: Callable[[str], None] | None = None) -> ScoredBatch:
    """Score every accepted video of ``batch`` not scored yet under the current version, on ``compute.engine``;
    ``on_done(video_id)`` runs in this process once each video's rows are stored."""
    version = version_of(cfg)
    table = ingest.read_table(root, ingest.batch_key(batch, "videos.parquet"))
    videos = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in table[table["status"] == "accepted"].to_dict("records")
    ]
    todo = [v for v in videos if not root.exists(result_key(version, v["video_id"]))]
    engine, nodes = cfg.compute.engine, 0
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(videos), initial=len(videos) - len(todo), desc=f"curate {batch} ({engine})",
                   unit="video", disable=not progress)

        def stored(video_id: str) -> None:
            bar.update(1)
            if on_done is not None:
                on_done(video_id)

        if engine == "ray":
            from curation import ray_engine

            nodes = ray_engine.score_videos(root, todo, version, batch, cfg, on_done=stored)
        else:
            nodes = 1
            _score_in_processes(todo, version, batch, cfg, on_done=stored)
        bar.close()
    return ScoredBatch(read_clips(root, version, [v["video_id"] for v in videos]), engine, nodes, len(todo))


def _score_in_processes(todo: list[dict], version: str, batch: str, cfg: SvdpipeConfig, on_done) -> None:
    workers = max(1, min(cfg.curation.workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # a forked child of a threaded parent (torch, Dagster) can hang
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(cfg.model_dump_json(), threads)) as pool:
        for video_id in pool.map(_score_one, [(v, version, batch) for v in todo]):
            on_done(video_id)


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
