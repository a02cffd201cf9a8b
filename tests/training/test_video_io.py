"""Tests for training.video_io: MP4/GIF round trips, frame layouts, odd sizes, atomic writes."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from training.video_io import read_video_frames, save_video, to_uint8_frames, write_gif, write_mp4


def _gradient_video(n=6, h=32, w=48) -> np.ndarray:
    """A smooth moving gradient: compresses well, so decoded frames stay close to the originals."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [np.stack([(xx * 4 + 8 * k) % 256, (yy * 6) % 256, np.full_like(xx, 128)], -1) for k in range(n)]
    return np.asarray(frames, dtype=np.uint8)


def test_to_uint8_frames_layouts_and_ranges():
    f = torch.rand(3, 3, 5, 7)  # (F, 3, H, W) float
    a = to_uint8_frames(f)
    assert a.shape == (3, 5, 7, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, np.rint(f.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8))
    assert to_uint8_frames(np.full((1, 2, 2, 3), 1.7)).max() == 255  # clipped
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((2, 4, 4)))


def test_mp4_roundtrip(tmp_path):
    video = _gradient_video()
    path = write_mp4(video, tmp_path / "sub" / "v.mp4", fps=7)
    back = read_video_frames(path)
    assert back.shape == video.shape
    assert np.abs(back.astype(int) - video.astype(int)).mean() < 6  # lossy H.264 at crf 18
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert float(s.average_rate) == pytest.approx(7.0)
    assert [p.name for p in path.parent.iterdir()] == ["v.mp4"]  # no temporary left behind


def test_mp4_odd_size_is_padded(tmp_path):
    video = _gradient_video(n=3, h=33, w=47)
    back = read_video_frames(write_mp4(video.astype(np.float32) / 255, tmp_path / "odd.mp4", fps=8))
    assert back.shape == (3, 34, 48, 3)


def test_gif_frame_count_and_duration(tmp_path):
    video = _gradient_video(n=5)
    path = write_gif(video, tmp_path / "v.gif", fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 5
        assert im.info["duration"] == 100
        assert im.info["loop"] == 0
    back = read_video_frames(path)
    assert back.shape == video.shape
    assert np.abs(back.astype(int) - video.astype(int)).mean() < 12  # 256-colour palette


def test_save_video_writes_both(tmp_path):
    mp4, gif = save_video(torch.rand(4, 3, 16, 16), tmp_path / "sample_000", fps=7)
    assert mp4.name == "sample_000.mp4" and gif.name == "sample_000.gif"
    assert len(read_video_frames(mp4)) == 4 and len(read_video_frames(gif)) == 4


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_mp4(np.zeros((0, 4, 4, 3), np.uint8), tmp_path / "empty.mp4", fps=7)
    with pytest.raises(av.error.FFmpegError):  # libx264 rejects the option
        write_mp4(_gradient_video(n=2), tmp_path / "bad.mp4", fps=7, crf=-5)
    assert list(tmp_path.iterdir()) == []
