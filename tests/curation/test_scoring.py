import numpy as np

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
