"""A tiny corpus of the video formats people bring: phone, editor, web and animation files, with known cuts.

Every file shows the same thing as a player would show it: two shots (a blue one, then a yellow one) joined by a
hard cut at a known time, a small square moving in each, and a red marker in the top-left corner of the *displayed*
picture. Phone videos are stored sideways with a rotation flag, so the marker lands top-left only when the flag is
honoured. Variable-frame-rate files change their rate at the cut, so the cut's time is not its frame index over
the nominal rate. Files are small (under 100x100, about two seconds) and written in well under a second each.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BLUE, YELLOW, RED = (30, 60, 200), (230, 200, 40), (255, 0, 0)


@dataclass(frozen=True)
class Spec:
    name: str
    codec: str  # encoder
    decoder: str  # codec name the probe reports
    pix_fmt: str
    width: int  # displayed size
    height: int
    rotation: int = 0  # counter-clockwise degrees of the display matrix (what phones write)
    rates: tuple[float, float] = (24.0, 24.0)  # frame rate of the first and the second shot
    cut_s: float = 1.0  # the cut: the first frame of the second shot starts here
    seconds: float = 2.0


SPECS = (
    Spec("webm_vp9.webm", "libvpx-vp9", "vp9", "yuv420p", 96, 64),
    Spec("mkv_hevc.mkv", "libx265", "hevc", "yuv420p", 96, 64),
    Spec("av1.mp4", "libsvtav1", "av1", "yuv420p", 96, 64),
    Spec("h264_10bit.mp4", "libx264", "h264", "yuv420p10le", 96, 64),
    Spec("prores.mov", "prores_ks", "prores", "yuv422p10le", 96, 64),
    Spec("mjpeg.avi", "mjpeg", "mjpeg", "yuvj420p", 96, 64),
    Spec("animated.gif", "gif", "gif", "rgb8", 96, 64, rates=(20.0, 20.0)),  # GIF delays are in 1/100 s
    Spec("odd_size.webm", "libvpx-vp9", "vp9", "yuv420p", 95, 63),
    Spec("portrait.mp4", "libx264", "h264", "yuv420p", 64, 96),
    Spec("phone_rot90.mp4", "libx264", "h264", "yuv420p", 64, 96, rotation=90),
    Spec("phone_rot270.mp4", "libx264", "h264", "yuv420p", 64, 96, rotation=-90),
    Spec("phone_rot180.mov", "libx264", "h264", "yuv420p", 96, 64, rotation=180),
    Spec("vfr.mkv", "libx264", "h264", "yuv420p", 96, 64, rates=(30.0, 10.0)),
    Spec("vfr_phone.mp4", "libx264", "h264", "yuv420p", 64, 96, rotation=90, rates=(30.0, 12.0), cut_s=0.8),
)


def frame_times(spec: Spec) -> list[float]:
    """Presentation time of every frame: the first shot at rates[0] up to the cut, the second at rates[1]."""
    first = [i / spec.rates[0] for i in range(int(round(spec.cut_s * spec.rates[0])))]
    second = [spec.cut_s + i / spec.rates[1] for i in range(int(round((spec.seconds - spec.cut_s) * spec.rates[1])))]
    return first + second


def displayed_frame(spec: Spec, t: float) -> np.ndarray:
    """What a player shows at time ``t``: the shot's colour, a moving square, the red marker top-left."""
    h, w = spec.height, spec.width
    second = t >= spec.cut_s
    img = np.empty((h, w, 3), np.uint8)
    img[:] = YELLOW if second else BLUE
    side = max(6, min(h, w) // 5)
    x = int((w - side) * ((t * 0.6) % 1.0))
    y = (h - side) // 2
    img[y : y + side, x : x + side] = (20, 20, 20) if second else (240, 240, 240)
    img[: h // 4, : w // 4] = RED
    return img


def marker_corner(rgb: np.ndarray) -> tuple[float, float]:
    """(row, column) of the red marker's centre as fractions of the frame: (about 0.12, 0.12) when upright."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    ys, xs = np.nonzero((r - g > 100) & (r - b > 100))
    return float(ys.mean() / rgb.shape[0]), float(xs.mean() / rgb.shape[1])


def write(spec: Spec, path: Path) -> None:
    times = frame_times(spec)
    k = (spec.rotation // 90) % 4
    stored_w, stored_h = (spec.height, spec.width) if k % 2 else (spec.width, spec.height)
    constant = spec.rates[0] == spec.rates[1]
    tb = Fraction(1, int(spec.rates[0])) if constant else Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(spec.codec, rate=Fraction(spec.rates[0]).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, spec.pix_fmt
        stream.codec_context.time_base = tb
        if spec.codec == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        elif spec.codec == "libsvtav1":
            stream.options = {"preset": "10"}  # preset 12 writes streams dav1d rejects at this size
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        for t in times:
            # stored sideways: the decoder's rot90 by the flag must bring the displayed picture back
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(displayed_frame(spec, t), -k)),
                                               format="rgb24")
            frame.pts, frame.time_base = int(round(t / tb)), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def make_format_corpus(out_dir: str | Path, specs: tuple[Spec, ...] = SPECS) -> dict:
    """Write every format and ``truth.json``; returns the truth (per file: its spec, frame times, frame count)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner unless told otherwise
    truth = {}
    for spec in specs:
        write(spec, out / spec.name)
        times = frame_times(spec)
        truth[spec.name] = {**asdict(spec), "num_frames": len(times), "cut_frame": times.index(spec.cut_s),
                            "duration_s": spec.seconds, "times": times}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
