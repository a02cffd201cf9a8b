"""Decode a video once, as a player shows it, and hand every scorer the frames it needs.

One pass over the stream produces:

* every frame, resized to the cut-detection width, pushed to a callback (the cut cascade) and then dropped;
* a sample of frames at ``sample_fps`` (2 fps in the paper), kept in two sizes: RGB at the scoring size (text,
  CLIP, captions) and grayscale at the flow size (motion);
* every frame's presentation time, so clip times come from timestamps (variable-frame-rate files from phones and
  screen recorders do not run at their nominal rate).

Frames are turned upright by the rotation flag (the display matrix phones write instead of rotating the pixels),
and ``width``/``height`` are the displayed size. Nothing else opens the video again for scoring; shards turn
their frames with ``upright_array``. Memory is bounded by the samples: at 2 fps and a 256-pixel short side,
a ten-minute 16:9 video keeps about 1200 x 200 KB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter


@dataclass
class Sample:
    index: int  # source frame index
    rgb: np.ndarray  # H x W x 3 uint8 at the scoring size
    gray: np.ndarray  # h x w uint8 at the flow size


@dataclass
class DecodedVideo:
    fps: float  # the stream's nominal rate (the mean rate for variable-frame-rate files)
    num_frames: int
    width: int  # displayed size
    height: int
    samples: list[Sample]
    times: np.ndarray  # num_frames + 1 seconds from the first frame: frame i shows over [times[i], times[i+1])


def scaled_size(width: int, height: int, *, short_side: int | None = None, width_to: int | None = None) -> tuple[int, int]:
    """Aspect-preserving size with even dimensions (what swscale and most codecs like)."""
    if width_to is not None:
        scale = width_to / width
    else:
        scale = short_side / min(width, height)
    scale = min(scale, 1.0)  # never upscale
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns (0-3) that bring ``frame`` upright, from its display matrix."""
    try:
        degrees = frame.rotation or 0
    except (AttributeError, ValueError):
        degrees = 0
    return int(round(degrees / 90)) % 4


def displayed_size(width: int, height: int, turns: int) -> tuple[int, int]:
    return (height, width) if turns % 2 else (width, height)


def upright(array: np.ndarray, turns: int) -> np.ndarray:
    """``array`` (H x W [x C], as stored) as displayed."""
    return np.ascontiguousarray(np.rot90(array, turns)) if turns else array


class Clock:
    """Presentation times in seconds from the first frame; a missing or non-increasing timestamp is taken as one
    nominal frame after the previous one (some AVI and GIF streams carry none)."""

    def __init__(self, fps: float):
        self.step = 1.0 / fps
        self.t0: float | None = None
        self.times: list[float] = []
        self.last_duration = 0.0

    def tick(self, frame: av.VideoFrame) -> float:
        t = frame.time
        if t is not None and self.t0 is None:
            self.t0 = t
        prev = self.times[-1] if self.times else None
        if t is None or self.t0 is None:
            t = 0.0 if prev is None else prev + self.step
        else:
            t -= self.t0
            if prev is not None and t <= prev:
                t = prev + self.step
        self.times.append(t)
        duration = frame.duration
        self.last_duration = float(duration * frame.time_base) if duration and frame.time_base else 0.0
        return t

    def boundaries(self) -> np.ndarray:
        """Frame start times plus the end of the last frame (its own duration, else the mean frame interval).

        A stream whose every frame starts within half a frame of the nominal grid is constant-rate: the grid
        ``i / fps`` is returned, free of the container's timestamp rounding (Matroska keeps milliseconds).
        """
        n = len(self.times)
        if n == 0:
            return np.zeros(1)
        grid = np.arange(n + 1) * self.step
        if np.all(np.abs(np.array(self.times) - grid[:n]) < 0.5 * self.step):
            return grid
        tail = self.last_duration or (self.times[-1] / (n - 1) if n > 1 else self.step)
        return np.array(self.times + [self.times[-1] + tail])


def nominal_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0


def upright_array(frame: av.VideoFrame, width: int, height: int, format: str = "rgb24",
                  reformatter: VideoReformatter | None = None) -> np.ndarray:
    """``frame`` as displayed, at the displayed ``width`` x ``height``: the stored picture is scaled, then turned."""
    turns = quarter_turns(frame)
    sw, sh = displayed_size(width, height, turns)
    out = (reformatter or VideoReformatter()).reformat(frame, width=sw, height=sh, format=format)
    return upright(out.to_ndarray(), turns)


def decode_once(
    path: str | Path,
    sample_fps: float,
    score_short_side: int,
    flow_short_side: int,
    detect_width: int,
    on_frame: Callable[[int, np.ndarray], None] | None = None,
) -> DecodedVideo:
    """Decode every frame of ``path`` once; ``on_frame(index, bgr)`` sees each, upright, at the detection width.

    Samples are taken by time: the first frame at or after each multiple of ``1 / sample_fps`` (less half a
    nominal frame, so a constant-rate video samples every ``fps / sample_fps``-th frame).
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = nominal_fps(stream)
        clock = Clock(fps)
        samples: list[Sample] = []
        width = height = 0
        next_t, slack = 0.0, 0.5 / fps
        # One reformatter per size keeps its swscale context; a fresh one per frame costs more than the cut cascade.
        to_detect, to_score = VideoReformatter(), VideoReformatter()
        for index, frame in enumerate(container.decode(stream)):
            if index == 0:
                width, height = displayed_size(frame.width, frame.height, quarter_turns(frame))
                dw, dh = scaled_size(width, height, width_to=detect_width)
                sw, sh = scaled_size(width, height, short_side=score_short_side)
                fw, fh = scaled_size(width, height, short_side=flow_short_side)
            t = clock.tick(frame)
            if on_frame is not None:
                on_frame(index, upright_array(frame, dw, dh, "bgr24", to_detect))
            if t >= next_t - slack:
                rgb = upright_array(frame, sw, sh, "rgb24", to_score)
                gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
                samples.append(Sample(index, rgb, gray))
                while next_t - slack <= t:
                    next_t += 1.0 / sample_fps
    times = clock.boundaries()
    return DecodedVideo(fps=fps, num_frames=len(times) - 1, width=width, height=height, samples=samples, times=times)
