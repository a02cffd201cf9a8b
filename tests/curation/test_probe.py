import numpy as np
import pytest
from PIL import Image

from curation.probe import content_hash, probe_video

EXPECTED_REASON = {
    "empty": "empty file",
    "truncated": "truncated",
    "random_bytes": "not a readable media container",
    "text_file": "text file",
    "audio_only": "no video stream",
    "undecodable": "undecodable video stream",
}


def test_good_videos_match_their_truth(corpus):
    folder, truth = corpus
    for name, t in truth["videos"].items():
        probe = probe_video(folder / name)
        assert probe.ok, (name, probe.reason)
        assert probe.num_frames == t["num_frames"]
        assert probe.fps == pytest.approx(t["fps"])
        assert (probe.width, probe.height) == (t["width"], t["height"])
        assert probe.duration_s == pytest.approx(t["num_frames"] / t["fps"])
        assert probe.codec in {"h264", "mpeg4"}


def test_every_broken_kind_is_rejected_with_its_reason(corpus):
    folder, truth = corpus
    assert set(truth["broken"].values()) == set(EXPECTED_REASON)
    for name, kind in truth["broken"].items():
        probe = probe_video(folder / name)
        assert not probe.ok, name
        assert EXPECTED_REASON[kind] in probe.reason, (name, probe.reason)


def test_still_image_is_not_a_video(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "still.png")
    probe = probe_video(tmp_path / "still.png")
    assert not probe.ok and "still image" in probe.reason


def test_missing_file_is_a_reason_not_a_crash(tmp_path):
    probe = probe_video(tmp_path / "gone.mp4")
    assert not probe.ok and "unreadable" in probe.reason


def test_content_hash_is_content_only(tmp_path):
    (tmp_path / "a").write_bytes(b"same")
    (tmp_path / "b").write_bytes(b"same")
    (tmp_path / "c").write_bytes(b"other")
    assert content_hash(tmp_path / "a") == content_hash(tmp_path / "b") != content_hash(tmp_path / "c")
    assert len(content_hash(tmp_path / "a")) == 16
