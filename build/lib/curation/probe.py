"""Probe one input file with PyAV: is it a decodable video, and what are its duration, rate, size and length?

A probe never raises for bad input; it returns a ``VideoProbe`` whose ``reason`` says what is wrong, so that
ingestion can account for every input. The checks, in order:

* empty file;
* the container cannot be opened (random bytes, a text file, an MP4 whose index is cut off);
* no video stream (audio only);
* the video stream yields no decodable frame (garbage packets);
* truncated: fewer frames decode than the container declares (``min_decoded_fraction``);
* a decode error part-way through the stream.

Every packet is demuxed (cheap) and every frame decoded without colour conversion, which is what it takes to
know that the whole stream decodes; curation decodes again at reduced size, once, for all scorers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av

HASH_CHUNK = 4 * 1024 * 1024
# FFmpeg renders any text file as a video through its "tty" demuxer (ANSI art); such input is text, not video.
TEXT_AS_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}


@dataclass(frozen=True)
class VideoProbe:
    ok: bool
    reason: str = ""
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    num_frames: int | None = None

    def as_row(self) -> dict:
        row = asdict(self)
        row.pop("ok")
        return row


def content_hash(path: str | Path, length: int = 16) -> str:
    """``video_id``: the first ``length`` hex digits of the file's SHA-256 (64 bits by default)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:length]


def _declared_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float) -> int:
    """Frames the container claims to hold: its frame count, else its duration times the rate (0 if unknown)."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * fps))
    if container.duration:
        return int(round(container.duration / av.time_base * fps))
    return 0


def probe_video(path: str | Path, min_decoded_fraction: float = 0.9) -> VideoProbe:
    path = Path(path)
    try:
        if os.path.getsize(path) == 0:
            return VideoProbe(False, "empty file")
    except OSError as e:
        return VideoProbe(False, f"unreadable file: {e.strerror or e}")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        return VideoProbe(False, f"not a readable media container: {_msg(e)}")
    with container:
        if container.format.name in TEXT_AS_VIDEO_FORMATS:
            return VideoProbe(False, f"not a video: a text file (FFmpeg would render it as {container.format.name})")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no"]
            return VideoProbe(False, f"no video stream (found {', '.join(kinds)} streams)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        codec = stream.codec_context.name if stream.codec_context else None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        declared = _declared_frames(container, stream, fps) if fps > 0 else 0
        decoded, width, height, first_t, last_t, error = 0, None, None, None, None, None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    decoded += 1
                    width, height = frame.width, frame.height
                    if frame.time is not None:
                        first_t = frame.time if first_t is None else first_t
                        last_t = frame.time
        except (av.FFmpegError, ValueError) as e:
            error = _msg(e)
        if decoded == 0:
            return VideoProbe(False, f"undecodable video stream ({codec}): {error or 'no frame decodes'}", codec=codec)
        if decoded < 2:
            return VideoProbe(False, "a single frame: a still image, not a video", codec=codec, num_frames=decoded)
        if fps <= 0 and first_t is not None and last_t is not None and last_t > first_t:
            fps = (decoded - 1) / (last_t - first_t)
        if fps <= 0:
            return VideoProbe(False, "video stream has no usable frame rate", codec=codec, num_frames=decoded)
        if error:
            return VideoProbe(
                False, f"decode error after {decoded} frames: {error}", codec=codec, num_frames=decoded, fps=fps
            )
        if declared and decoded < min_decoded_fraction * declared:
            return VideoProbe(
                False,
                f"truncated: {decoded} of {declared} declared frames decode "
                f"({decoded / fps:.2f} s of {declared / fps:.2f} s)",
                codec=codec,
                num_frames=decoded,
                fps=fps,
            )
        return VideoProbe(
            True,
            duration_s=decoded / fps,
            fps=round(fps, 6),
            width=width,
            height=height,
            codec=codec,
            num_frames=decoded,
        )


def _msg(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return " ".join(text.split())[:300]
