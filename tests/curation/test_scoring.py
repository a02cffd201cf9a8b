import numpy as np
import pytest
import torch

from curation.scoring import away_from_fades, first_middle_last


def test_scoring_frames_avoid_dissolves_at_clip_ends():
    frames = np.arange(0, 100, 10)  # samples at frames 0, 10, ..., 90
    inside = np.arange(len(frames))
    kept = away_from_fades(inside, frames, 0, 100, fade_in=True, fade_out=True, margin=12)
    assert frames[kept].tolist() == [20, 30, 40, 50, 60, 70, 80]
    assert away_from_fades(inside[:2], frames, 0, 15, True, True, 12).tolist() == [0, 1]  # nothing left: keep all
    assert first_middle_last(np.array([4, 5, 6, 7])) == [4, 5, 7]


def test_a_video_that_fails_to_decode_is_recorded_not_raised(tmp_path, corpus):
    from curation.scoring import Scorers, score_video
    from svdpipe.config import load_config

    cfg = load_config("tiny", environ={})
    scorers = Scorers.load(cfg.curation, cfg.seed)
    broken = tmp_path / "gone_bad.mp4"
    broken.write_bytes(b"\x00" * 4096)  # accepted once, corrupted in storage since
    rows = score_video(broken, {"video_id": "v1", "fps": 24.0, "num_frames": 48, "width": 64, "height": 36},
                       cfg.curation, scorers)
    assert len(rows) == 1 and rows[0]["error"].startswith("decode failed")
    assert (rows[0]["start_frame"], rows[0]["end_frame"]) == (0, 48)

    folder, truth = corpus  # and the same scorers go on with a good video
    name, t = next(iter(truth["videos"].items()))
    good = score_video(folder / name, {"video_id": "v2", "fps": t["fps"], "num_frames": t["num_frames"],
                                       "width": t["width"], "height": t["height"]}, cfg.curation, scorers)
    assert good[0]["start_frame"] == 0 and good[-1]["end_frame"] == t["num_frames"]
    assert all(r["error"] == "" or r["error"].startswith("unscored") for r in good)


# Reduced precision against float32, per score: bf16 keeps ~3 significant digits, so a CLIP cosine moves by a few
# 1e-3 and a CRAFT region score near a threshold can move a box edge by a pixel (a few 1e-3 of a frame).
# Text area at the tiny profile's 160 px: a box edge moving by one pixel is ~5e-3 of the frame.
PRECISION_TOLERANCE = {"text_area_ratio": 1e-2, "aesthetic_score": 1e-3, "clip_text_similarity": 5e-3}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.slow
def test_reduced_precision_scores_match_float32_within_tolerance(corpus, dtype, one_torch_thread):
    from curation.scoring import Scorers, prepare_video, score_clips
    from svdpipe.config import load_config

    cfg = load_config("tiny", environ={}).curation
    fp32, low = Scorers.load(cfg, 0), Scorers.load(cfg, 0, "cpu", dtype)
    assert low.clip._clip.dtype == getattr(torch, dtype) and next(low.text.net.parameters()).dtype == low.clip._clip.dtype
    folder, truth = corpus
    clips = []
    for name, t in truth["videos"].items():
        video = {"video_id": name, **{k: t[k] for k in ("fps", "num_frames", "width", "height")}}
        clips += prepare_video(folder / name, video, cfg, fp32.identity()).frames
    want = score_clips(clips, fp32)
    frames = [f for c in clips for f in c]
    text = np.abs(np.subtract(low.text.frame_ratios(frames), fp32.text.frame_ratios(frames)))
    assert text.max() <= PRECISION_TOLERANCE["text_area_ratio"]
    assert max(r["text_area_ratio"] for r in want) > 0.05  # text was found: the comparison covers real detections
    captions = [r["caption"] for r in want]  # the same captions, so the similarity compares the image tower
    looks = np.array(low.clip.clip_scores(clips, captions)) - [(r["aesthetic_score"], r["clip_text_similarity"])
                                                              for r in want]
    assert np.abs(looks[:, 0]).max() <= PRECISION_TOLERANCE["aesthetic_score"]
    assert np.abs(looks[:, 1]).max() <= PRECISION_TOLERANCE["clip_text_similarity"]
    # Captions are words, not scores: a near-tie between two tokens may break the other way in reduced precision.
    assert sum(a == b for a, b in zip(low.captioner.captions(clips), captions)) >= len(clips) // 2
