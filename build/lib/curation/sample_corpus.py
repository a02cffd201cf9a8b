"""A labelled synthetic video corpus: the ground truth that curation is measured against.

Each good video is a sequence of shots joined by hard cuts or slow transitions (cross-dissolves and fades
through black). A shot is *moving* (a textured scene panned by the camera with objects moving across it) or
*static* (a still scene with sensor noise), and *clean* or carrying a large text overlay. Broken inputs of every
kind ingestion must reject sit beside them. ``truth.json`` records, per video, every cut (frame index of the first
frame of the new shot; for transitions also the first and last transition frame) and every shot's labels.

Frame ranges are half-open: a shot spans ``[start_frame, end_frame)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "BREAKING NEWS SALE TODAY ONLY SUBSCRIBE NOW LIVE CONCERT TICKETS WEATHER UPDATE FINAL SCORE "
    "CHAPTER ONE THE END WELCOME BACK LIMITED OFFER"
).split()

BROKEN_KINDS = ("empty", "truncated", "random_bytes", "text_file", "audio_only", "undecodable")


@dataclass
class Shot:
    length: int
    moving: bool
    text: bool
    seed: int
    speed: float = 0.0  # camera pan, pixels per frame at full size
    text_area: float = 0.0  # fraction of the frame covered by the text box


@dataclass
class VideoPlan:
    name: str
    shots: list[Shot]
    transitions: list[tuple[str, int]]  # (kind, length) between shot i and i+1: ("hard", 0) or ("dissolve"|"fade_black", L)
    container: str = "mp4"
    codec: str = "libx264"
    truth: dict = field(default_factory=dict)


def _smooth_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A colourful low-frequency texture with some edges, so both cuts and optical flow have something to see."""
    coarse = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(12, 24))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(3, h // 40), max(6, h // 8)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=colour)
    return np.asarray(img, dtype=np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    # Pillow's bundled scalable font: no system fonts needed.
    return ImageFont.load_default(size=size)


def _text_layer(rng: np.random.Generator, h: int, w: int) -> tuple[Image.Image, Image.Image, float]:
    """Two or three lines of large caption text on a dark band; returns (rgb, mask, covered fraction)."""
    size = max(10, h // 9)
    lines = [" ".join(rng.choice(WORDS, size=2)) for _ in range(int(rng.integers(2, 4)))]
    font = _font(size)
    layer = Image.new("RGB", (w, h))
    mask = Image.new("L", (w, h))
    draw, mdraw = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    y = int(h * rng.uniform(0.1, 0.35))
    x = int(w * 0.06)
    covered = np.zeros((h, w), bool)
    for line in lines:
        l, t, r, b = draw.textbbox((x, y), line, font=font)
        r = min(r, w - 2)
        mdraw.rectangle([l - 4, t - 4, r + 4, b + 4], fill=170)  # translucent dark band behind the text
        draw.rectangle([l - 4, t - 4, r + 4, b + 4], fill=(10, 10, 10))
        draw.text((x, y), line, font=font, fill=(255, 255, 240))
        mdraw.text((x, y), line, font=font, fill=255)
        covered[max(0, t - 4) : b + 5, max(0, l - 4) : r + 5] = True
        y = b + size // 3
    return layer, mask, float(covered.mean())


class _ShotRenderer:
    def __init__(self, shot: Shot, h: int, w: int):
        rng = np.random.default_rng(shot.seed)
        self.shot, self.h, self.w = shot, h, w
        # Room for the pan over the shot plus a transition's overhang at either end (t runs from about -32).
        pad = int(math.ceil(shot.speed * (shot.length / 2 + 32))) + 8
        angle = rng.uniform(0, 2 * math.pi)
        self.v = (shot.speed * math.cos(angle), shot.speed * math.sin(angle))
        self.pad = pad
        self.canvas = _smooth_field(rng, h + 2 * pad, w + 2 * pad)
        self.objects = [
            (rng.integers(0, w), rng.integers(0, h), rng.uniform(-2, 2) * shot.speed, rng.uniform(-2, 2) * shot.speed,
             int(rng.integers(h // 16, h // 6)), tuple(int(c) for c in rng.integers(0, 256, 3)))
            for _ in range(3 if shot.moving else 0)
        ]
        self.noise = np.random.default_rng(shot.seed + 1)
        self.text = None
        if shot.text:
            layer, mask, shot.text_area = _text_layer(rng, h, w)
            self.text = (np.asarray(layer, np.float32), np.asarray(mask, np.float32)[..., None] / 255.0)

    def frame(self, t: int) -> np.ndarray:
        # The camera window, centred on the canvas at the middle of the shot, moves by v each frame.
        dt = t - self.shot.length / 2
        x0 = int(np.clip(round(self.pad + self.v[0] * dt), 0, 2 * self.pad))
        y0 = int(np.clip(round(self.pad + self.v[1] * dt), 0, 2 * self.pad))
        img = Image.fromarray(self.canvas[y0 : y0 + self.h, x0 : x0 + self.w])
        if self.objects:
            draw = ImageDraw.Draw(img)
            for ox, oy, vx, vy, r, colour in self.objects:
                x = (ox + vx * t) % (self.w + 2 * r) - r
                y = (oy + vy * t) % (self.h + 2 * r) - r
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0))
        out = np.asarray(img, np.float32)
        out += self.noise.normal(0, 1.5, out.shape).astype(np.float32)  # sensor noise: static is never identical
        if self.text is not None:
            rgb, alpha = self.text
            out = out * (1 - alpha) + rgb * alpha
        return np.clip(out, 0, 255)


def plan_corpus(seed: int, videos: int, fps: int, seconds: float) -> list[VideoPlan]:
    """Random shot plans that together cover every label and transition kind."""
    rng = np.random.default_rng(seed)
    plans = []
    containers = [("mp4", "libx264"), ("mkv", "libx264"), ("avi", "mpeg4"), ("mov", "libx264")]
    for i in range(videos):
        total = int(seconds * fps)
        shots: list[Shot] = []
        used = 0
        while used < total:
            length = int(rng.integers(int(1.8 * fps), int(4.0 * fps)))
            length = min(length, max(total - used, int(1.8 * fps)))
            k = len(shots) + i  # rotate labels so every video mixes them
            moving = bool((k % 3) != 1)
            text = bool((k % 4) == 2)
            speed = float(rng.uniform(1.5, 4.0)) if moving else 0.0
            shots.append(Shot(length, moving, text, int(rng.integers(0, 2**31)), speed))
            used += length
        transitions = []
        for j in range(len(shots) - 1):
            r = rng.random()
            if r < 0.65:
                transitions.append(("hard", 0))
            else:
                kind = "dissolve" if r < 0.85 else "fade_black"
                transitions.append((kind, int(rng.integers(int(0.6 * fps), int(1.2 * fps)))))
        container, codec = containers[i % len(containers)]
        plans.append(VideoPlan(f"video_{seed:04d}_{i:02d}", shots, transitions, container, codec))
    return plans


def _frames(plan: VideoPlan, h: int, w: int):
    """Yield frames and fill ``plan.truth``. A transition of length L centred on the boundary overlaps both shots."""
    renderers = [_ShotRenderer(s, h, w) for s in plan.shots]
    starts = np.cumsum([0] + [s.length for s in plan.shots])
    cuts, shots = [], []
    for j, shot in enumerate(plan.shots):
        shots.append({"start_frame": int(starts[j]), "end_frame": int(starts[j + 1]),
                      "motion": "moving" if shot.moving else "static", "text": "text" if shot.text else "clean",
                      "speed_px_per_frame": round(shot.speed, 3), "text_area": round(shot.text_area, 4)})
    for j, (kind, length) in enumerate(plan.transitions):
        b = int(starts[j + 1])
        cut = {"frame": b, "kind": "hard" if kind == "hard" else "fade", "style": kind}
        if kind != "hard":
            cut.update(start=b - length // 2, end=b + length - length // 2 - 1)
        cuts.append(cut)
    plan.truth = {"num_frames": int(starts[-1]), "cuts": cuts, "shots": shots}
    for j, shot in enumerate(plan.shots):
        for t in range(shot.length):
            g = int(starts[j]) + t
            frame = renderers[j].frame(t)
            for k, (kind, length) in enumerate(plan.transitions):
                if kind == "hard":
                    continue
                b = int(starts[k + 1])
                lo, hi = b - length // 2, b + length - length // 2
                if not lo <= g < hi:
                    continue
                a = (g - lo + 0.5) / length  # 0 -> all outgoing shot, 1 -> all incoming shot
                if j == k + 1:  # we are in the incoming shot; blend with the outgoing one continuing
                    other = renderers[k].frame(plan.shots[k].length + (g - b))
                    mine, theirs = a, 1 - a
                else:  # in the outgoing shot; blend with the incoming one started early
                    other = renderers[k + 1].frame(g - b)
                    mine, theirs = 1 - a, a
                if kind == "dissolve":
                    frame = frame * mine + other * theirs
                else:  # fade through black: out over the first half, in over the second
                    level = abs(2 * a - 1)
                    frame = (frame if mine >= theirs else other) * level
            yield frame.astype(np.uint8)


def write_video(path: Path, frames, fps: int, h: int, w: int, codec: str, muxer_options: dict | None = None) -> None:
    with av.open(str(path), "w", options=muxer_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20"}
        elif codec == "mpeg4":
            stream.bit_rate = 2_000_000
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_broken(dirpath: Path, kind: str, seed: int, fps: int, h: int, w: int) -> str:
    """Write one broken input of the given kind; returns its file name."""
    rng = np.random.default_rng(seed)
    if kind == "empty":
        name = "broken_empty.mp4"
        (dirpath / name).write_bytes(b"")
    elif kind == "random_bytes":
        name = "broken_random.mp4"
        (dirpath / name).write_bytes(rng.bytes(256 * 1024))
    elif kind == "text_file":
        name = "broken_notes.txt"
        (dirpath / name).write_text("These are shooting notes, not a video.\n" * 200)
    elif kind == "truncated":
        name = "broken_truncated.mp4"
        full = dirpath / ".full.mp4"
        shot = _ShotRenderer(Shot(4 * fps, True, False, seed, 3.0), h, w)
        # faststart puts the index first, so the cut-off file still opens and the truncation must be detected.
        write_video(full, (shot.frame(t).astype(np.uint8) for t in range(4 * fps)), fps, h, w, "libx264",
                    {"movflags": "+faststart"})
        data = full.read_bytes()
        (dirpath / name).write_bytes(data[: int(len(data) * 0.4)])
        full.unlink()
    elif kind == "audio_only":
        name = "broken_audio_only.m4a"
        with av.open(str(dirpath / name), "w") as out:
            stream = out.add_stream("aac", rate=44100)
            t = np.arange(44100 * 2) / 44100
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            for i in range(0, samples.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + 1024]), format="fltp",
                                                   layout="mono")
                frame.sample_rate = 44100
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    elif kind == "undecodable":
        # A well-formed container whose H.264 stream carries garbage: opens, demuxes, never decodes.
        name = "broken_undecodable.mkv"
        with av.open(str(dirpath / name), "w") as out:
            stream = out.add_stream("h264", rate=fps)
            stream.width, stream.height = w, h
            for i in range(2 * fps):
                packet = av.Packet(rng.bytes(2048))
                packet.stream = stream
                packet.pts = packet.dts = i
                packet.time_base = stream.time_base or av.time_base
                out.mux(packet)
    else:
        raise ValueError(f"unknown broken kind {kind!r}; one of {BROKEN_KINDS}")
    return name


def make_sample_corpus(
    out_dir: str | Path,
    seed: int = 0,
    videos: int = 4,
    seconds: float = 12.0,
    fps: int = 24,
    width: int = 320,
    height: int = 192,
    broken: bool = True,
    progress=None,
) -> dict:
    """Write the corpus and ``truth.json`` into ``out_dir``; returns the truth."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = {"version": 1, "seed": seed, "fps": fps, "width": width, "height": height,
             "frame_ranges": "half-open [start_frame, end_frame)", "videos": {}, "broken": {}}
    for plan in plan_corpus(seed, videos, fps, seconds):
        name = f"{plan.name}.{plan.container}"
        write_video(out / name, _frames(plan, height, width), fps, height, width, plan.codec)
        truth["videos"][name] = {"fps": fps, "width": width, "height": height, **plan.truth}
        if progress:
            progress(name)
    if broken:
        for i, kind in enumerate(BROKEN_KINDS):
            truth["broken"][write_broken(out, kind, seed * 100 + i, fps, height, width)] = kind
            if progress:
                progress(kind)
    tmp = out / ".truth.json.part"
    tmp.write_text(json.dumps(truth, indent=2))
    os.replace(tmp, out / "truth.json")
    return truth
