"""Every common video format is read as a player shows it: upright, at its displayed size, cut at the right time."""

import io
import shutil
import subprocess

import av
import numpy as np
import pytest

from curation import ingest
from curation.clips_table import to_frame
from curation.decode import decode_once
from curation.probe import probe_video
from curation.shards import cut_clips
from format_corpus import SPECS, marker_corner
from svdpipe.config import load_config
from svdpipe.config_schema import IngestConfig, ShardsConfig
from svdpipe.sources import list_inputs
from svdpipe.storage import open_storage

NAMES = [s.name for s in SPECS]
UPRIGHT = (0.12, 0.12)  # the red marker's centre in the displayed picture (row, column fractions)


def _upright(rgb: np.ndarray) -> bool:
    return np.allclose(marker_corner(rgb), UPRIGHT, atol=0.08)


@pytest.mark.parametrize("name", NAMES)
def test_probe_reports_the_displayed_video(formats, name):
    folder, truth = formats
    t = truth[name]
    probe = probe_video(folder / name)
    assert probe.ok, probe.reason  # a variable-frame-rate file is not "truncated"
    assert (probe.width, probe.height) == (t["width"], t["height"])  # rotated phone videos: upright size
    assert probe.codec == t["decoder"] and probe.num_frames == t["num_frames"]
    # the last frame lasts what the container says: within a frame of the written length
    assert probe.duration_s == pytest.approx(t["duration_s"], abs=1 / t["rates"][1] + 2e-3)
    assert probe.fps == pytest.approx(t["num_frames"] / probe.duration_s, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_decode_is_upright_and_timed_by_timestamps(formats, name):
    folder, truth = formats
    t = truth[name]
    shapes = set()
    decoded = decode_once(folder / name, sample_fps=2.0, score_short_side=48, flow_short_side=24, detect_width=64,
                          on_frame=lambda i, bgr: shapes.add(bgr.shape))
    assert (decoded.width, decoded.height) == (t["width"], t["height"]) and decoded.num_frames == t["num_frames"]
    assert all(_upright(s.rgb) for s in decoded.samples), name
    (h, w, _), = shapes
    assert (h > w) == (t["height"] > t["width"])
    np.testing.assert_allclose(decoded.times[:-1], t["times"], atol=1.5e-3)  # Matroska keeps milliseconds
    # samples every 0.5 s by time, whatever the rate
    assert [round(float(decoded.times[s.index]) * 2) for s in decoded.samples] == list(range(len(decoded.samples)))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg command to compare with")
@pytest.mark.parametrize("name", [s.name for s in SPECS if s.rotation])
def test_rotation_matches_what_ffmpeg_shows(formats, name):
    """The ffmpeg command (what players build on) auto-rotates: our first frame is the picture it shows."""
    folder, truth = formats
    t = truth[name]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(folder / name), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    shown = np.frombuffer(raw, np.uint8).reshape(t["height"], t["width"], 3)
    ours = decode_once(folder / name, 2.0, 4096, 24, 4096).samples[0].rgb
    assert ours.shape == shown.shape and _upright(shown)
    assert np.abs(ours.astype(int) - shown).mean() < 4


def test_every_format_is_ingested_with_its_displayed_size(formats, tmp_path):
    folder, truth = formats
    root = open_storage(tmp_path / "root")
    todo, _ = ingest.plan_batches(root, list_inputs(str(folder), (".*", "*.json")))
    frame = ingest.ingest_batch(root, todo[0], IngestConfig(workers=2), progress=False)
    rows = {u.rsplit("/", 1)[-1]: r for u, r in zip(frame["source_uri"], frame.to_dict("records"))}
    assert {n: r["reason"] for n, r in rows.items() if r["status"] != "accepted"} == {}
    assert {n: (r["width"], r["height"]) for n, r in rows.items()} == {
        n: (t["width"], t["height"]) for n, t in truth.items()}


@pytest.fixture(scope="module")
def scorers():
    from curation.scoring import Scorers

    cfg = load_config("tiny", environ={})
    return cfg, Scorers.load(cfg.curation, cfg.seed)


@pytest.mark.parametrize("name", ["vfr.mkv", "vfr_phone.mp4", "phone_rot90.mp4", "animated.gif", "av1.mp4"])
def test_clips_are_cut_and_timed_as_shown(formats, scorers, name, one_torch_thread):
    from curation.scoring import score_video

    folder, truth = formats
    t = truth[name]
    cfg, models = scorers
    probe = probe_video(folder / name)
    video = {"video_id": "v", **probe.as_row()}
    rows = score_video(folder / name, video, cfg.curation, models)
    assert [r["error"] for r in rows] == ["", ""]
    first, second = rows
    assert (first["end_frame"], second["start_frame"]) == (t["cut_frame"], t["cut_frame"])
    assert second["start_s"] == pytest.approx(t["cut_s"], abs=1.5e-3)  # from timestamps, not frame / nominal fps
    assert first["duration_s"] == pytest.approx(t["cut_s"], abs=1.5e-3)
    assert (second["width"], second["height"]) == (t["width"], t["height"])
    assert second["fps"] == pytest.approx(second["num_frames"] / second["duration_s"])


def test_shards_cut_rotated_phone_video_upright(formats):
    folder, truth = formats
    t = truth["phone_rot90.mp4"]
    clips = to_frame([{"clip_id": "a", "video_id": "v", "start_frame": 0, "end_frame": t["cut_frame"], "width": 1,
                       "height": 1, "num_frames": 1}])
    encoded = cut_clips(folder / "phone_rot90.mp4", clips, ShardsConfig(crf=10))
    with av.open(io.BytesIO(encoded["a"])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == t["cut_frame"] and frames[0].shape[:2] == (t["height"], t["width"])
    assert all(_upright(f) for f in frames)
