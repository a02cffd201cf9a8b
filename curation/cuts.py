"""Cut detection: a cascade of PySceneDetect passes at three frame rates (SVD, Blattmann et al. 2023, Sec. 3).

The caller decodes a video once and pushes every frame (BGR, ``cfg.detect_width`` wide) into a ``CutCascade``:

* ``full`` - ContentDetector on every frame: hard and fast cuts, where one frame differs a lot from the next.
* ``black`` - ThresholdDetector on every frame: fades out to black and back in.
* ``sub<k>`` (two passes) - ContentDetector on every k-th frame, k set by a target rate in fps: a slow dissolve that
  changes each frame only a little changes a lot between samples a few hundred milliseconds apart.

Between two samples, a pan with moving objects changes the pixels as much as a dissolve does (measured on the sample
corpus at 2 fps: median ContentDetector score 47 inside moving shots, 48 across dissolves), so a subsampled hit
becomes a cut only when the frames around it show a blend: their contrast dips to what a mix of the shots on either
side would have (see ``CutCascade._dissolves``). Detections of one transition by several passes merge into one cut;
no shot is shorter than ``cfg.min_shot_s``. Frame ranges are half-open: a shot spans ``[start, end)``.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass
from itertools import pairwise

import av
import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode, ThresholdDetector
from scenedetect.detector import FlashFilter

from svdpipe.config_schema import CutsConfig


@dataclass(frozen=True)
class Cut:
    """A cut before ``frame``: where a fade has no single cut frame, the middle of its low (dark or blended) part."""

    frame: int  # index of the first frame of the new shot
    kind: str  # "hard" or "fade"
    passes: tuple[str, ...]  # names of the passes that found it, e.g. ("full", "sub4")


def detect_size(width: int, height: int, detect_width: int) -> tuple[int, int]:
    """Frame size for cut detection: ``detect_width`` wide (never upscaled), aspect kept, even sides for swscale."""
    scale = min(detect_width / width, 1.0)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


_BLACK, _FULL, _DIP = 0, 1, 2  # ranks of the evidence for a cut (see CutCascade.finish)


@dataclass
class _SubPass:
    name: str
    step: int
    detector: ContentDetector
    hits: list[int]  # sample frames b whose change from b - step crossed the threshold


class CutCascade:
    """Push every frame in order, then ``finish`` for the merged cuts. See the module docstring."""

    def __init__(self, cfg: CutsConfig, fps: float):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.cfg, self.fps = cfg, float(fps)
        self.min_len = max(1, round(cfg.min_shot_s * self.fps))
        self._rate = FrameTimecode(0, fps=self.fps)  # passing a timecode as the rate skips re-parsing it each frame
        # SUPPRESS keeps the first frame of a jump (the first frame of the new shot) and ignores the next min_len.
        self._full = ContentDetector(threshold=cfg.full_threshold, min_scene_len=self.min_len,
                                     filter_mode=FlashFilter.Mode.SUPPRESS)
        self._black = ThresholdDetector(threshold=cfg.black_level, min_scene_len=self.min_len, fade_bias=0.0)
        self._subs: list[_SubPass] = []
        for rate, threshold in zip(cfg.sub_fps, cfg.sub_thresholds, strict=True):
            if rate <= 0:
                raise ValueError(f"subsampled rates must be positive, got {cfg.sub_fps}")
            step = max(1, round(self.fps / rate))
            # No length filter here: a hit inside a pan must not hide a dissolve just after it; merging decides.
            self._subs.append(_SubPass(f"sub{step}", step, ContentDetector(threshold=threshold, min_scene_len=0), []))
        self._hard: list[int] = []
        self._blacks: list[int] = []
        self._contrast = array("f")  # per frame: B, G, R and grey standard deviation (16 bytes a frame)
        self._next = 0

    def push(self, index: int, frame_bgr: np.ndarray) -> None:
        """Feed frame ``index`` (0, 1, 2, ... in order): H x W x 3 uint8 BGR at the detection size."""
        if index != self._next:
            raise ValueError(f"frames must be pushed in order: expected {self._next}, got {index}")
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 BGR frame, got shape {frame_bgr.shape}")
        self._next += 1
        tc = FrameTimecode(index, fps=self._rate)
        self._hard.extend(t.frame_num for t in self._full.process_frame(tc, frame_bgr))
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        # The detector only thresholds the mean brightness; the grey image gives it a third of the pixels to sum.
        self._blacks.extend(t.frame_num for t in self._black.process_frame(tc, grey))
        # Contrast (standard deviation) of the B, G, R planes and of grey: a dissolve dips in each of them.
        self._contrast.extend(cv2.meanStdDev(frame_bgr)[1][:, 0])
        self._contrast.append(cv2.meanStdDev(grey)[1][0, 0])
        for p in self._subs:
            if index % p.step == 0 and p.detector.process_frame(tc, frame_bgr):
                p.hits.append(index)

    # -- finishing: dissolve checks and merging (once per video, not per frame)

    def _dissolves(self, contrast: np.ndarray) -> dict[int, set[str]]:
        """Subsampled hits that are dissolves: contrast-dip frame -> names of the passes that led to it."""
        grey = contrast[:, 3]
        half = max(1, round(self.cfg.fade_window_s * self.fps) // 2)
        verdicts: dict[int, bool] = {}
        found: dict[int, set[str]] = {}
        for p in self._subs:
            for b in p.hits:
                a = max(0, b - p.step)
                m = a + int(np.argmin(grey[a : b + 1]))
                if m not in verdicts:
                    # Only the lowest point nearby speaks for a dip; other hits would land on its flanks.
                    lowest = grey[m] <= grey[max(0, m - half) : m + half + 1].min()
                    verdicts[m] = lowest and self._is_blend(contrast, m)
                if verdicts[m]:
                    found.setdefault(m, set()).add(p.name)
        return found

    def _is_blend(self, contrast: np.ndarray, m: int) -> bool:
        """Is frame ``m`` the low point of a blend of the shots on either side?

        Blending unrelated images A and B as (1-a)A + aB has standard deviation sqrt((1-a)^2 sA^2 + a^2 sB^2),
        lowest at sA sB / sqrt(sA^2 + sB^2); a shot without a blend stays near min(sA, sB), at least sqrt(2) times
        that. The ratio of the contrast at ``m`` to the lowest blend, averaged over B, G, R and grey, is about 1 for
        a dissolve (a little more for correlated shots) and about 1.4 for camera or object motion.
        """
        window = max(2, round(self.cfg.fade_window_s * self.fps))
        lo, hi = max(0, m - window), min(len(contrast), m + window + 1)
        # The sides stop at full-rate cuts: the shot beyond a hard cut says nothing about this one.
        i = bisect.bisect_right(self._hard, m)
        if i:
            lo = max(lo, self._hard[i - 1])
        if i < len(self._hard):
            hi = min(hi, self._hard[i])
        if m - lo < 2 or hi - m < 3:
            return False
        # The upper quartile of a side is its shot's contrast, above the transition's own flank and robust to spikes.
        left = np.maximum(np.percentile(contrast[lo:m], 75, axis=0), 1.0)
        right = np.maximum(np.percentile(contrast[m + 1 : hi], 75, axis=0), 1.0)
        ratio = float(np.mean(contrast[m] * np.sqrt(1.0 / left**2 + 1.0 / right**2)))
        return ratio <= self.cfg.dip_ratio

    def finish(self, num_frames: int) -> list[Cut]:
        """Merged cuts, sorted by frame, every one at least ``min_shot_s`` from the next and from both ends."""
        if num_frames != self._next:
            raise ValueError(f"finish({num_frames}) after {self._next} pushed frames")
        if num_frames < 2:
            return []
        contrast = np.frombuffer(self._contrast, np.float32).reshape(-1, 4)
        # Each pass reports a transition at most once (its own minimum length or dip spacing), so detections merge
        # only across passes: in rank order, one joins the nearest cut already placed within merge_s, else places
        # a cut itself. A fade through black also jumps at full rate next to its black frames, so black places it;
        # else a full-rate jump places a hard cut on the first frame of the new shot (a dissolve never jumps at
        # full rate); else a dissolve sits at its contrast dip.
        events = [(_BLACK, f, ("black",)) for f in self._blacks]
        events += [(_FULL, f, ("full",)) for f in self._hard]
        events += [(_DIP, m, tuple(names)) for m, names in sorted(self._dissolves(contrast).items())]
        merge = round(self.cfg.merge_s * self.fps)
        placed: dict[int, tuple[int, set[str]]] = {}  # frame -> (rank, pass names)
        order: list[int] = []  # placed frames, sorted
        for rank, frame, names in events:
            window = order[bisect.bisect_left(order, frame - merge) : bisect.bisect_right(order, frame + merge)]
            near = [f for f in window if placed[f][0] != rank]
            if near:
                placed[min(near, key=lambda f: abs(f - frame))][1].update(names)
            else:
                bisect.insort(order, frame)
                placed[frame] = (rank, set(names) | self._sub_names_at(frame))
        # Best evidence first; a cut stays only if it leaves shots of at least min_len on both sides.
        kept: list[int] = []
        cuts = []
        for frame in sorted(placed, key=lambda f: (placed[f][0], f)):
            rank, names = placed[frame]
            if frame < self.min_len or num_frames - frame < self.min_len:
                continue
            i = bisect.bisect_left(kept, frame)
            if (i > 0 and frame - kept[i - 1] < self.min_len) or (i < len(kept) and kept[i] - frame < self.min_len):
                continue
            kept.insert(i, frame)
            cuts.append(Cut(frame, "hard" if rank == _FULL else "fade", tuple(sorted(names, key=_pass_order))))
        return sorted(cuts, key=lambda c: c.frame)

    def _sub_names_at(self, frame: int) -> set[str]:
        """Subsampled passes whose sample pair spans ``frame`` (a hard cut is a big change at every rate)."""
        names = set()
        for p in self._subs:
            i = bisect.bisect_left(p.hits, frame)
            if i < len(p.hits) and p.hits[i] - p.step < frame:
                names.add(p.name)
        return names


def _pass_order(name: str) -> tuple[int, int]:
    if name == "full":
        return (0, 0)
    if name == "black":
        return (2, 0)
    return (1, int(name[3:]))


def shots_from_cuts(cuts: list[Cut], num_frames: int) -> list[tuple[int, int]]:
    """Half-open shots ``[start, end)`` covering ``[0, num_frames)`` exactly, one per gap between cuts."""
    bounds = sorted({c.frame for c in cuts if 0 < c.frame < num_frames})
    edges = [0, *bounds, num_frames]
    return [(a, b) for a, b in pairwise(edges) if b > a]


def detect_cuts_file(path: str, cfg: CutsConfig) -> list[Cut]:
    """Decode ``path`` with PyAV by itself and run the cascade: the naive one-decode-per-scorer way."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        cascade = CutCascade(cfg, float(rate) if rate else 25.0)
        n = 0
        for n, frame in enumerate(container.decode(stream), start=1):
            w, h = detect_size(frame.width, frame.height, cfg.detect_width)
            cascade.push(n - 1, frame.to_ndarray(width=w, height=h, format="bgr24"))
    return cascade.finish(n)
