import av
import numpy as np

from curation.sample_corpus import make_sample_corpus


def _gray_frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="gray").astype(np.float32) for f in c.decode(video=0)])


def test_truth_is_consistent(corpus):
    _, truth = corpus
    labels = set()
    for name, t in truth["videos"].items():
        shots = t["shots"]
        assert shots[0]["start_frame"] == 0 and shots[-1]["end_frame"] == t["num_frames"]
        for a, b in zip(shots, shots[1:]):
            assert a["end_frame"] == b["start_frame"]
        assert [c["frame"] for c in t["cuts"]] == [s["start_frame"] for s in shots[1:]]
        for c in t["cuts"]:
            if c["kind"] == "fade":
                assert c["start"] < c["frame"] <= c["end"]
        labels |= {(s["motion"], s["text"]) for s in shots}
        labels |= {c["kind"] for c in t["cuts"]}
    assert {"hard", "fade"} <= labels
    assert {("static", "clean"), ("moving", "clean")} <= labels
    assert any(label[1] == "text" for label in labels if isinstance(label, tuple))


def test_frames_show_the_labelled_structure(corpus):
    """Hard cuts are jumps, static shots barely change, moving shots change."""
    folder, truth = corpus
    for name, t in truth["videos"].items():
        frames = _gray_frames(folder / name)
        assert len(frames) == t["num_frames"]
        diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))  # diff[i]: frame i -> i+1
        for c in t["cuts"]:
            if c["kind"] == "hard":
                inside = np.median(diff[max(0, c["frame"] - 10) : c["frame"] - 1])
                assert diff[c["frame"] - 1] > 3 * inside + 5, (name, c)
        for s in t["shots"]:
            lo, hi = s["start_frame"] + 14, s["end_frame"] - 14  # away from transitions
            if hi - lo < 4:
                continue
            level = diff[lo:hi].mean()
            if s["motion"] == "static":
                assert level < 1.0, (name, s, level)
            else:
                assert level > 2.0, (name, s, level)


def test_seeds_give_different_videos(tmp_path):
    make_sample_corpus(tmp_path / "a", seed=1, videos=1, seconds=3, width=128, height=72, broken=False)
    make_sample_corpus(tmp_path / "b", seed=2, videos=1, seconds=3, width=128, height=72, broken=False)
    fa = _gray_frames(next((tmp_path / "a").glob("video_*")))
    fb = _gray_frames(next((tmp_path / "b").glob("video_*")))
    assert np.abs(fa[0] - fb[0]).mean() > 10
