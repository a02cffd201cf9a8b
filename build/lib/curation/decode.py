"""Decode a video once, and hand every scorer the frames it needs.

One pass over the stream produces:

* every frame, resized to the cut-detection width, pushed to a callback (the cut cascade) and then dropped;
* a sample of frames at ``sample_fps`` (2 fps in the paper), kept in two sizes: RGB at the scoring size (text,
  CLIP, captions) and grayscale at the flow size (motion).

Nothing else opens the video again. Memory is bounded by the samples: at 2 fps and a 256-pixel short side, a
ten-minute 16:9 video keeps about 1200 x 200 KB.
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
    fps: float
    num_frames: int
    width: int
    height: int
    samples: list[Sample]


def scaled_size(width: int, height: int, *, short_side: int | None = None, width_to: int | None = None) -> tuple[int, int]:
    """Aspect-preserving size with even dimensions (what swscale and most codecs like)."""
    if width_to is not None:
        scale = width_to / width
    else:
        scale = short_side / min(width, height)
    scale = min(scale, 1.0)  # never upscale
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def decode_once(
    path: str | Path,
    sample_fps: float,
    score_short_side: int,
    flow_short_side: int,
    detect_width: int,
    on_frame: Callable[[int, np.ndarray], None] | None = None,
) -> DecodedVideo:
    """Decode every frame of ``path`` once; ``on_frame(index, bgr)`` sees each at the detection width."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        width, height = stream.codec_context.width, stream.codec_context.height
        dw, dh = scaled_size(width, height, width_to=detect_width)
        sw, sh = scaled_size(width, height, short_side=score_short_side)
        fw, fh = scaled_size(width, height, short_side=flow_short_side)
        step = max(fps / sample_fps, 1.0)
        next_sample, k = 0, 0
        samples: list[Sample] = []
        index = -1
        # One reformatter per size keeps its swscale context; a fresh one per frame costs more than the cut cascade.
        to_detect, to_score = VideoReformatter(), VideoReformatter()
        for index, frame in enumerate(container.decode(stream)):
            if on_frame is not None:
                on_frame(index, to_detect.reformat(frame, width=dw, height=dh, format="bgr24").to_ndarray())
            if index == next_sample:
                rgb = to_score.reformat(frame, width=sw, height=sh, format="rgb24").to_ndarray()
                gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
                samples.append(Sample(index, rgb, gray))
                k += 1
                next_sample = int(round(k * step))
    return DecodedVideo(fps=fps, num_frames=index + 1, width=width, height=height, samples=samples)
