import io

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation import dedup
from curation.clips_table import to_frame
from curation.sample_corpus import Shot, _ShotRenderer
from svdpipe.config import load_config

from svdpipe.config_schema import DedupConfig
H, W, N = 180, 320, 36
_INTS = {"width": W, "height": H, "num_frames": 1}


def _shot(seed: int, moving: bool, text: bool) -> list[np.ndarray]:
    r = _ShotRenderer(Shot(length=N, moving=moving, text=text, seed=seed, speed=2.0 if moving else 0.0), H, W)
    return [r.frame(t).astype(np.uint8) for t in range(N)]


def _reencode(frames: list[np.ndarray], crf: int = 35) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt, s.options = w - w % 2, h - h % 2, "yuv420p", {"crf": str(crf)}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: h - h % 2, : w - w % 2]),
                                                         format="rgb24")))
        out.mux(s.encode())
    buf.seek(0)
    with av.open(buf) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _crop(frames, keep=0.8):
    h, w = frames[0].shape[:2]
    ch, cw = int(h * keep), int(w * keep)
    y, x = (h - ch) // 2, (w - cw) // 2
    return [np.ascontiguousarray(f[y:y + ch, x:x + cw]) for f in frames]


def _resize(frames, scale=0.5):
    return [np.asarray(Image.fromarray(f).resize((int(f.shape[1] * scale), int(f.shape[0] * scale)),
                                                 Image.BILINEAR)) for f in frames]


def _scored(frames):
    return [frames[0], frames[len(frames) // 2], frames[-1]]  # what scoring embeds: first, middle, last


@pytest.fixture(scope="module")
def shots_and_copies():
    """Ten different shots (moving, static, with and without text), each with re-encoded, cropped and resized copies."""
    kinds = [(True, False), (True, True), (False, False), (False, True), (True, False)] * 2
    rows = []
    for i, (moving, text) in enumerate(kinds):
        frames = _shot(500 + i, moving, text)
        copies = {"original": frames, "reencoded": _reencode(frames), "cropped": _crop(frames),
                  "resized": _resize(frames), "all three": _reencode(_crop(_resize(frames, 0.75), 0.85))}
        for kind, f in copies.items():
            rows.append({"shot": i, "kind": kind, "embedding": dedup.thumbnail_embedding(_scored(f))})
    return rows


def _table(rows, order):
    frame = to_frame([{"clip_id": f"v{rows[i]['shot']:02d}{rows[i]['kind'][:2]}-{k:07d}-{k + 1:07d}",
                       "video_id": f"v{k:03d}", "start_frame": 0, "end_frame": 1, **_INTS,
                       "thumbnail_embedding": rows[i]["embedding"].tolist()} for k, i in enumerate(order)])
    return frame, [rows[i]["shot"] for i in order]


def test_every_copy_is_found_and_no_different_shots_pair(shots_and_copies):
    rows = shots_and_copies
    # In a shuffled table a copy may come before its original: the first of each shot stays, the rest are marked.
    order = np.random.default_rng(0).permutation(len(rows))
    frame, shot_of = _table(rows, order)
    marked, embedded = dedup.mark_table(frame, load_config("tiny", environ={}).dedup)
    assert embedded == len(rows)
    shot_by_id = dict(zip(marked["clip_id"], shot_of))
    first_seen = set()
    for cid, dup, shot in zip(marked["clip_id"], marked["duplicate_of"], shot_of):
        if shot in first_seen:
            assert not pd.isna(dup), f"copy {cid} of shot {shot} not found"
            assert shot_by_id[dup] == shot, f"{cid} paired with another shot's clip {dup}"
        else:
            assert pd.isna(dup), f"{cid}, the first clip of shot {shot}, marked as a copy of {dup}"
            first_seen.add(shot)
    assert marked["duplicate_of"].notna().sum() == len(rows) - len(first_seen)


def test_tolerance_sits_between_copies_and_different_shots(shots_and_copies):
    """The tiny profile's tolerance has a margin on both sides on these shots (the figures dedup.py documents)."""
    e = np.stack([r["embedding"] for r in shots_and_copies])
    shot = np.array([r["shot"] for r in shots_and_copies])
    d = 1 - e @ e.T
    same, other = shot[:, None] == shot[None, :], shot[:, None] != shot[None, :]
    tol = load_config("tiny", environ={}).dedup.max_distance
    assert d[same].max() < 0.3 < tol < 0.6 < d[other].min()


def test_near_duplicates_match_brute_force_in_blocks(monkeypatch):
    rng = np.random.default_rng(1)
    e = rng.normal(size=(11, 8)).astype(np.float32)
    e[7] = e[2] + 0.01 * rng.normal(size=8)  # a copy of 2
    e[9] = e[2] + 0.02 * rng.normal(size=8)  # also a copy of 2, and close to 7
    e[4] = 0  # no embedding: neither marked nor matched
    e[5] = e[4]
    e[10] = np.nan
    monkeypatch.setattr(dedup, "_BLOCK", 3)
    got = dedup.near_duplicates(e, 0.01)
    with np.errstate(invalid="ignore"):
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
    want = np.full(len(e), -1)
    for i in range(len(e)):
        if not np.isfinite(u[i]).all():
            continue
        d = [1 - u[i] @ u[j] if np.isfinite(u[j]).all() else np.inf for j in range(i)]
        if d and min(d) <= 0.01:
            want[i] = int(np.argmin(d))
    assert want[7] == 2 and want[9] in (2, 7) and (want[[0, 1, 2, 3, 4, 5, 6, 8, 10]] == -1).all()
    assert got.tolist() == want.tolist()


def test_clips_without_embeddings_are_not_marked():
    frame = to_frame([{"clip_id": f"v-{i:07d}-{i + 1:07d}", "video_id": "v", "start_frame": i, "end_frame": i + 1,
                       **_INTS}
                      for i in range(3)])
    marked, embedded = dedup.mark_table(frame, DedupConfig(embedding="clip"))
    assert embedded == 0 and marked["duplicate_of"].isna().all()
    frame["image_embedding"] = [[1.0, 0.0], [1.0, 0.0], [2.0, 3.0, 4.0]]
    with pytest.raises(ValueError, match="different sizes"):
        dedup.mark_table(frame, DedupConfig(embedding="clip"))
    frame["image_embedding"] = [[1.0, 0.0], None, [1.0, 0.001]]
    marked, embedded = dedup.mark_table(frame, DedupConfig(embedding="clip", max_distance=0.01))
    assert embedded == 2 and marked["duplicate_of"].tolist()[2] == "v-0000000-0000001"
    assert marked["duplicate_of"].isna().tolist() == [True, True, False]
