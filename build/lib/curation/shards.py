"""Training-ready WebDataset shards of a curated selection: per clip an ``mp4``, its ``json`` row and ``txt`` caption.

Clips are cut frame-accurately and re-encoded (H.264). The paper cuts with ffmpeg at keyframes without re-encoding;
that starts a clip at the keyframe before its first frame and so leaks the end of the previous shot into it,
which is exactly what cut detection is there to prevent. Each source video is decoded once for all its clips.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd

from curation.decode import scaled_size
from svdpipe.config import ShardsConfig
from svdpipe.storage import LocalStorage, Storage


def _encode(frames: list[np.ndarray], fps: float, crf: int) -> bytes:
    buf = io.BytesIO()
    h, w = frames[0].shape[:2]
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        for arr in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def cut_clips(path: str | Path, clips: pd.DataFrame, cfg: ShardsConfig) -> dict[str, bytes]:
    """``clip_id -> mp4 bytes`` for the given clips of one video, decoding the video once."""
    ranges = sorted(zip(clips["start_frame"], clips["end_frame"], clips["clip_id"]))
    out: dict[str, bytes] = {}
    if not ranges:
        return out
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        w, h = stream.codec_context.width, stream.codec_context.height
        if cfg.short_side:
            w, h = scaled_size(w, h, short_side=cfg.short_side)
        w, h = w - w % 2, h - h % 2  # yuv420p needs even sizes
        current: list[np.ndarray] = []
        r = 0
        for index, frame in enumerate(container.decode(stream)):
            while r < len(ranges) and index >= ranges[r][1]:
                out[ranges[r][2]] = _encode(current, fps, cfg.crf) if current else b""
                current, r = [], r + 1
            if r == len(ranges):
                break
            if index >= ranges[r][0]:
                current.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
        if r < len(ranges) and current:
            out[ranges[r][2]] = _encode(current, fps, cfg.crf)
    return {k: v for k, v in out.items() if v}


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


def write_shards(root: Storage, prefix: str, kept: pd.DataFrame, videos: pd.DataFrame, cfg: ShardsConfig,
                 progress: bool = True) -> list[str]:
    """Write ``prefix/shard-NNNNNN.tar`` for the kept clips (sorted by clip id); stale shards are removed."""
    import webdataset as wds
    from tqdm import tqdm

    stored = dict(zip(videos["video_id"], videos["stored_key"]))
    kept = kept.sort_values("clip_id").reset_index(drop=True)
    keys: list[str] = []
    with tempfile.TemporaryDirectory(prefix="svdpipe-shards-") as tmp:
        writer, count = None, 0

        def flush() -> None:
            nonlocal writer
            if writer is not None:
                writer.close()
                key = f"{prefix}/shard-{len(keys):06d}.tar"
                root.upload(Path(tmp) / "current.tar", key)
                keys.append(key)
                writer = None

        bar = tqdm(total=len(kept), desc=f"shards {prefix}", unit="clip", disable=not progress)
        for video_id, group in kept.groupby("video_id", sort=True):
            if isinstance(root, LocalStorage):
                path = root.local_path(stored[video_id])
            else:
                path = Path(tmp) / Path(stored[video_id]).name
                root.download(stored[video_id], path)
            encoded = cut_clips(path, group, cfg)
            for row in group.sort_values("clip_id").to_dict("records"):
                if writer is None:
                    writer, count = wds.TarWriter(str(Path(tmp) / "current.tar")), 0
                writer.write({"__key__": row["clip_id"], "mp4": encoded[row["clip_id"]],
                              "json": json.dumps(_jsonable(row)).encode(), "txt": str(row["caption"]).encode()})
                count += 1
                bar.update(1)
                if count >= cfg.max_clips_per_shard:
                    flush()
            if not isinstance(root, LocalStorage):
                path.unlink(missing_ok=True)
        flush()
        bar.close()
    for stale in set(root.list(prefix)) - set(keys):
        root.delete(stale)
    return keys
