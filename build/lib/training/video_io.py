"""Writing sample videos: MP4 (H.264 through PyAV) and GIF (Pillow), atomically; reading them back.

Frames come as (F, H, W, 3) or (F, 3, H, W), numpy or torch, uint8 or float in [0, 1] (what
``training.sampling.decode_latents`` returns per video). Each file is written to a temporary name in the target
folder and renamed into place, so a reader never sees half a video.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

__all__ = ["read_video_frames", "save_video", "to_uint8_frames", "write_gif", "write_mp4"]


def to_uint8_frames(frames) -> np.ndarray:
    """(F, H, W, 3) uint8 from (F, H, W, 3) or (F, 3, H, W), uint8 or float in [0, 1] (rounded, clipped)."""
    if hasattr(frames, "detach"):  # torch tensor
        frames = frames.detach().cpu().float().numpy() if frames.is_floating_point() else frames.cpu().numpy()
    a = np.asarray(frames)
    if a.ndim != 4:
        raise ValueError(f"expected 4-D frames (F, H, W, 3) or (F, 3, H, W), got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[1] == 3:
        a = a.transpose(0, 2, 3, 1)
    if a.shape[-1] != 3:
        raise ValueError(f"expected RGB frames, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


@contextmanager
def _atomic_path(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a sample video is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_mp4(frames, path: str | Path, fps: float, *, crf: int = 18) -> Path:
    """H.264 (libx264, yuv420p) MP4. yuv420p needs even sizes, so odd heights/widths get one edge row/column."""
    a = to_uint8_frames(frames)
    if len(a) == 0:
        raise ValueError("no frames to write")
    pad_h, pad_w = a.shape[1] % 2, a.shape[2] % 2
    if pad_h or pad_w:
        a = np.pad(a, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with _atomic_path(path) as tmp, av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = a.shape[2], a.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in a:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_gif(frames, path: str | Path, fps: float) -> Path:
    """Looping GIF; GIF delays are in 1/100 s, so the frame duration is 1000/fps ms rounded to 10 ms."""
    a = to_uint8_frames(frames)
    if len(a) == 0:
        raise ValueError("no frames to write")
    duration_ms = max(10, round(100.0 / fps) * 10)
    images = [Image.fromarray(f) for f in a]
    path = Path(path)
    with _atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=duration_ms,
            loop=0,
            disposal=1,
            optimize=False,
        )
    return path


def save_video(frames, stem: str | Path, fps: float) -> tuple[Path, Path]:
    """Write ``<stem>.mp4`` and ``<stem>.gif``; returns both paths."""
    stem = Path(stem)
    return write_mp4(frames, stem.with_suffix(".mp4"), fps), write_gif(frames, stem.with_suffix(".gif"), fps)


def read_video_frames(path: str | Path) -> np.ndarray:
    """All frames of an MP4 (PyAV) or GIF (Pillow) as (F, H, W, 3) uint8."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            out = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                out.append(np.asarray(im.convert("RGB")))
        return np.stack(out)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
