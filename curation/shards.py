"""Training-ready WebDataset shards of a curated selection: per clip an ``mp4``, its ``json`` row and ``txt`` caption.

Clips are cut frame-accurately and re-encoded (H.264). The paper cuts with ffmpeg at keyframes without re-encoding;
that starts a clip at the keyframe before its first frame and so leaks the end of the previous shot into it,
which is exactly what cut detection is there to prevent.

Each clip is encoded once per encoding setting, not once per variant: ``encoded_clips/<settings>/<clip_id>.mp4``
holds it, and every variant's shards are tars assembled from those files. Each source video is decoded once for all
its missing clips, and videos are encoded in parallel threads (PyAV decodes, scales and encodes without the GIL).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd

from curation.decode import displayed_size, quarter_turns, scaled_size, upright_array
from svdpipe.config_schema import ShardsConfig
from svdpipe.storage import LocalStorage, Storage

ENCODED = "encoded_clips"


def settings_id(cfg: ShardsConfig) -> str:
    """Names the encoding settings: clips encoded under other settings are other files."""
    return hashlib.sha1(json.dumps(cfg.model_dump(include={"short_side", "crf"}), sort_keys=True).encode()).hexdigest()[:12]


def clip_key(cfg: ShardsConfig, clip_id: str) -> str:
    return f"{ENCODED}/{settings_id(cfg)}/{clip_id}.mp4"


class _Encoder:
    """One clip's H.264 stream, fed decoded frames scaled straight to yuv420p (no RGB round trip)."""

    def __init__(self, fps: float, w: int, h: int, crf: int):
        self.buf = io.BytesIO()
        self.out = av.open(self.buf, "w", format="mp4")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.out.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": str(crf)}
        self.count = 0

    def add(self, frame: av.VideoFrame) -> None:
        w, h = self.stream.width, self.stream.height
        if quarter_turns(frame):  # stored sideways: turn it upright through RGB (the rare case)
            frame = av.VideoFrame.from_ndarray(upright_array(frame, w, h), format="rgb24")
        f = frame.reformat(width=w, height=h, format="yuv420p")
        f.pts, f.time_base = self.count, 1 / self.rate  # the clip's own timeline, from 0
        self.out.mux(self.stream.encode(f))
        self.count += 1

    def finish(self) -> bytes:
        self.out.mux(self.stream.encode())
        self.out.close()
        return self.buf.getvalue()


def cut_clips(path: str | Path, clips: pd.DataFrame, cfg: ShardsConfig) -> dict[str, bytes]:
    """``clip_id -> mp4 bytes`` for the given clips of one video, decoding the video once.

    Clips with no decodable frame are left out (the caller reports them).
    """
    ranges = sorted(zip(clips["start_frame"], clips["end_frame"], clips["clip_id"]))
    out: dict[str, bytes] = {}
    if not ranges:
        return out
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        active: dict[str, tuple[int, _Encoder]] = {}  # clips being written (ranges may overlap)
        r, last = 0, max(end for _, end, _ in ranges)
        for index, frame in enumerate(container.decode(stream)):
            if index >= last:
                break
            if index == 0:  # the displayed size: a phone video stored sideways is cut upright
                w, h = displayed_size(frame.width, frame.height, quarter_turns(frame))
                if cfg.short_side:
                    w, h = scaled_size(w, h, short_side=cfg.short_side)
                w, h = w - w % 2, h - h % 2  # yuv420p needs even sizes
            for cid in [c for c, (end, _) in active.items() if index >= end]:
                out[cid] = active.pop(cid)[1].finish()
            while r < len(ranges) and ranges[r][0] <= index:
                start, end, cid = ranges[r]
                if index < end:
                    active[cid] = (end, _Encoder(fps, w, h, cfg.crf))
                r += 1
            for _, enc in active.values():
                enc.add(frame)
        for cid, (_, enc) in active.items():
            out[cid] = enc.finish()
    return out


def encode_clips(root: Storage, clips: pd.DataFrame, videos: pd.DataFrame, cfg: ShardsConfig,
                 progress: bool = True) -> dict[str, float]:
    """Store every clip of ``clips`` not encoded yet under the current settings; returns what it did.

    A missing source frame range raises, naming the clips, and leaves the clips encoded so far in place.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    have = set(root.list(f"{ENCODED}/{settings_id(cfg)}"))
    todo = clips[~clips["clip_id"].map(lambda c: clip_key(cfg, c)).isin(have)]
    stored = dict(zip(videos["video_id"], videos["stored_key"]))

    def one(video_id: str, group: pd.DataFrame) -> int:
        with tempfile.TemporaryDirectory(prefix="svdpipe-encode-") as tmp:
            if isinstance(root, LocalStorage):
                path = root.local_path(stored[video_id])
            else:
                path = Path(tmp) / Path(stored[video_id]).name
                root.download(stored[video_id], path)
            encoded = cut_clips(path, group, cfg)
        missing = sorted(set(group["clip_id"]) - set(encoded))
        for cid, data in encoded.items():
            root.write_bytes(clip_key(cfg, cid), data)
        if missing:
            raise ValueError(f"video {video_id} ({stored[video_id]}) has no frames for clip(s) {missing[:5]}: "
                             "is the clips table from another version of this video? Rerun `svdpipe curate`.")
        return len(encoded)

    groups = list(todo.groupby("video_id", sort=True))
    with tqdm(total=len(todo), desc="encode clips", unit="clip", disable=not progress or not len(todo)) as bar, \
            ThreadPoolExecutor(max(1, min(cfg.workers, len(groups) or 1))) as pool:
        # Longest videos first, so no thread is left alone with a long one at the end.
        groups.sort(key=lambda g: -int(g[1]["end_frame"].max()))
        for fut in as_completed([pool.submit(one, vid, g) for vid, g in groups]):
            bar.update(fut.result())
    return {"clips_encoded": int(len(todo)), "clips_reused": int(len(clips) - len(todo)),
            "encode_s": round(time.perf_counter() - t0, 2)}


def prune_encoded(root: Storage, keep: set[str], cfg: ShardsConfig) -> int:
    """Delete encoded clips no configured variant keeps, and those of other settings; returns how many."""
    wanted = {clip_key(cfg, c) for c in keep}
    stale = [k for k in root.list(ENCODED) if k not in wanted]
    for key in stale:
        root.delete(key)
    return len(stale)


def _jsonable(row: dict) -> dict:
    clean = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, (np.floating, float)):
            v = None if math.isnan(v) else float(v)
        elif isinstance(v, np.integer):
            v = int(v)
        elif v is pd.NA:
            v = None
        clean[k] = v
    return clean


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o444
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Storage, prefix: str, kept: pd.DataFrame, videos: pd.DataFrame, cfg: ShardsConfig,
                 progress: bool = True) -> list[str]:
    """Write ``prefix/shard-NNNNNN.tar`` for the kept clips (sorted by clip id); stale shards are removed.

    Clips not encoded yet are encoded first; the shards are then plain WebDataset tars of the stored clip files.
    """
    encode_clips(root, kept, videos, cfg, progress)
    kept = kept.sort_values("clip_id").reset_index(drop=True)
    rows = kept.to_dict("records")
    keys: list[str] = []
    with tempfile.TemporaryDirectory(prefix="svdpipe-shards-") as tmp:
        for first in range(0, len(rows), cfg.max_clips_per_shard):
            local = Path(tmp) / "current.tar"
            with tarfile.open(local, "w") as tar:
                for row in rows[first:first + cfg.max_clips_per_shard]:
                    cid = row["clip_id"]
                    _add(tar, f"{cid}.mp4", root.read_bytes(clip_key(cfg, cid)))
                    _add(tar, f"{cid}.json", json.dumps(_jsonable(row)).encode())
                    _add(tar, f"{cid}.txt", str(row["caption"]).encode())
            key = f"{prefix}/shard-{len(keys):06d}.tar"
            root.upload(local, key)
            keys.append(key)
    for stale in set(root.list(prefix)) - set(keys):
        root.delete(stale)
    return keys
