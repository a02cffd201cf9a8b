"""The cut cascade on labelled sample videos it was not tuned on (seeds, sizes and frame rates of their own)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from curation.cut_metrics import match_cuts, merge_counts
from curation.cuts import Cut, CutCascade, detect_cuts_file, detect_size, shots_from_cuts
from curation.sample_corpus import make_sample_corpus, write_video
from svdpipe.config_schema import CutsConfig

CFG = CutsConfig()
# (seed, videos, seconds, fps, width, height): seeds, sizes and rates the cascade was never developed or tuned on.
# Together they hold 22 hard cuts and 18 fades (dissolves and fades through black); the largest goes first so
# that the two worker processes finish at about the same time.
CORPORA = [
    (37, 2, 12.0, 25, 480, 270),
    (31, 3, 12.0, 24, 320, 192),
    (53, 3, 12.0, 25, 320, 180),
    (43, 3, 12.0, 30, 256, 144),
]


def decode(path: Path) -> tuple[list[np.ndarray], float]:
    """The caller's way: decode once with PyAV, each frame resized to the detection width as BGR."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(width=w, height=h, format="bgr24") for f in container.decode(stream)
                  for w, h in [detect_size(f.width, f.height, CFG.detect_width)]]
        return frames, float(stream.average_rate)


def decode_and_detect(path: Path) -> tuple[list[Cut], int]:
    frames, fps = decode(path)
    cascade = CutCascade(CFG, fps)
    for i, frame in enumerate(frames):
        cascade.push(i, frame)
    return cascade.finish(len(frames)), len(frames)


def _make_and_detect(job) -> list[tuple[Path, dict, list[Cut], int]]:
    seed, videos, seconds, fps, width, height, out = job
    truth = make_sample_corpus(out, seed=seed, videos=videos, seconds=seconds, fps=fps, width=width, height=height,
                               broken=False)
    return [(Path(out) / name, t, *decode_and_detect(Path(out) / name)) for name, t in truth["videos"].items()]


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    """{video path: (truth, cuts, num_frames)} over all test corpora, made and detected on two processes."""
    root = tmp_path_factory.mktemp("cuts")
    with ProcessPoolExecutor(2) as pool:
        done = pool.map(_make_and_detect, [(*spec, str(root / f"s{spec[0]}")) for spec in CORPORA])
    return {path: (t, cuts, n) for videos in done for path, t, cuts, n in videos}


def test_corpora_hold_both_kinds(detected):
    kinds = [c["kind"] for t, _, _ in detected.values() for c in t["cuts"]]
    assert kinds.count("hard") == 22 and kinds.count("fade") == 18, kinds


def test_f1_per_kind(detected):
    results = [match_cuts(cuts, t["cuts"]) for t, cuts, _ in detected.values()]
    pooled = merge_counts(results)
    assert pooled["hard"]["f1"] >= 0.95, pooled
    assert pooled["fade"]["f1"] >= 0.95, pooled


def test_kinds_and_passes(detected):
    """A matched cut carries its truth's kind; a hard cut comes from the full-rate pass, a fade from the others."""
    agree = total = 0
    for t, cuts, _ in detected.values():
        by_frame = {c.frame: c for c in cuts}
        truth_by_frame = {c["frame"]: c for c in t["cuts"]}
        for pred, true in match_cuts(cuts, t["cuts"])["matches"]:
            total += 1
            agree += by_frame[pred].kind == truth_by_frame[true]["kind"]
        for c in cuts:
            assert len(set(c.passes)) == len(c.passes)
            if c.kind == "hard":
                assert "full" in c.passes
            else:  # through black, or a dissolve seen by a subsampled pass
                assert c.kind == "fade" and any(p == "black" or p.startswith("sub") for p in c.passes)
    assert agree >= 0.95 * total


def test_no_cut_inside_a_shot(detected):
    """Static shots and moving shots (pans with objects moving) stay whole away from their transitions."""
    for path, (t, cuts, _) in detected.items():
        cut_at = {c["frame"]: c for c in t["cuts"]}
        for shot in t["shots"]:
            first, last = cut_at.get(shot["start_frame"]), cut_at.get(shot["end_frame"])
            lo = (first["end"] if first and first["kind"] == "fade" else shot["start_frame"]) + 3
            hi = (last["start"] if last and last["kind"] == "fade" else shot["end_frame"]) - 3
            inside = [c.frame for c in cuts if lo <= c.frame <= hi]
            assert not inside, (path.name, shot, inside)


def test_fast_cuts(detected):
    """Shots just over the minimum length, each from another shot than the one before, are all cut apart."""
    videos = [(p, t) for p, (t, _, _) in detected.items() if p.parent.name == "s31"]
    fps = videos[0][1]["fps"]
    chunk = round(CFG.min_shot_s * fps) + 2
    shots = []  # interiors of the truth shots, away from their transitions
    for path, t in videos:
        frames, _ = decode(path)
        shots += [frames[s["start_frame"] + 15 : s["end_frame"] - 15] for s in t["shots"]]
    shots = [s for s in shots if len(s) >= 2 * chunk]
    sequence = [shots[k % len(shots)][(k // len(shots)) * chunk :][:chunk] for k in range(2 * len(shots))]
    assert len(sequence) >= 10 and all(len(piece) == chunk for piece in sequence)
    cascade = CutCascade(CFG, fps)
    for i, frame in enumerate(f for piece in sequence for f in piece):
        cascade.push(i, frame)
    cuts = cascade.finish(chunk * len(sequence))
    assert [(c.frame, c.kind) for c in cuts] == [(chunk * k, "hard") for k in range(1, len(sequence))]


def test_shots_cover_every_frame(detected):
    for t, cuts, n in detected.values():
        shots = shots_from_cuts(cuts, n)
        assert shots[0][0] == 0 and shots[-1][1] == n
        assert all(a[1] == b[0] for a, b in pairwise(shots))
        assert all(e > s for s, e in shots)
        assert len(shots) == len(cuts) + 1
        min_len = round(CFG.min_shot_s * t["fps"])
        assert all(e - s >= min_len for s, e in shots)


def test_shots_from_cuts_edge_cases():
    def cut(frame):
        return Cut(frame, "hard", ("full",))

    assert shots_from_cuts([], 10) == [(0, 10)]
    assert shots_from_cuts([cut(7), cut(3)], 10) == [(0, 3), (3, 7), (7, 10)]
    # Cuts at the ends or repeated make no empty shot.
    assert shots_from_cuts([cut(0), cut(5), cut(5), cut(10)], 10) == [(0, 5), (5, 10)]
    assert shots_from_cuts([], 0) == []


def test_file_detection_agrees_with_the_cascade(detected):
    path, (_, cuts, _) = next(iter(detected.items()))
    assert cuts and detect_cuts_file(str(path), CFG) == cuts


def _single_shot_video(path: Path, moving: bool, fps: int = 25, seconds: float = 6.0, w: int = 320, h: int = 180):
    """One long shot: a textured scene panned with objects crossing it, or a still scene with sensor noise."""
    rng = np.random.default_rng(123 if moving else 321)
    n = int(fps * seconds)
    vx, vy = (3.5, 1.5) if moving else (0.0, 0.0)
    cw, ch = w + int(vx * n) + 1, h + int(vy * n) + 1
    canvas = cv2.resize(rng.integers(0, 256, (ch // 40 + 2, cw // 40 + 2, 3), dtype=np.uint8), (cw, ch),
                        interpolation=cv2.INTER_CUBIC)
    for _ in range(cw * ch // 2000):
        x, y = int(rng.integers(0, cw)), int(rng.integers(0, ch))
        cv2.circle(canvas, (x, y), int(rng.integers(4, 20)), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)

    def frames():
        for i in range(n):
            x0, y0 = int(vx * i), int(vy * i)
            img = canvas[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
            if moving:  # objects crossing the frame at their own speeds
                for k in range(3):
                    cx = int((40 + 90 * k + (6 - 4 * k) * i) % (w + 40)) - 20
                    cv2.circle(img, (cx, 30 + 55 * k), 14 + 6 * k, (250.0, 40.0 * k, 90.0), -1)
            img += rng.normal(0, 1.5, img.shape).astype(np.float32)
            yield np.clip(img, 0, 255).astype(np.uint8)

    write_video(path, frames(), fps, h, w, "libx264")


@pytest.mark.parametrize("moving", [True, False])
def test_one_shot_video_has_no_cut(tmp_path, moving):
    path = tmp_path / "one_shot.mp4"
    _single_shot_video(path, moving)
    cuts, n = decode_and_detect(path)
    assert n == 150 and cuts == []
    assert shots_from_cuts(cuts, n) == [(0, n)]


def test_frames_must_come_in_order():
    cascade = CutCascade(CFG, 25.0)
    frame = np.zeros((144, 256, 3), np.uint8)
    cascade.push(0, frame)
    with pytest.raises(ValueError):
        cascade.push(2, frame)
    with pytest.raises(ValueError):
        cascade.push(1, frame[..., 0])  # grey, not BGR
    with pytest.raises(ValueError):
        cascade.finish(5)
    assert cascade.finish(1) == []
