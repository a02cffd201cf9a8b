"""The one table of metric directions that the comparison and the registration rule read."""

import math

import pytest

from training.metrics.directions import better, direction, is_uncertainty, not_worse, rank_blocker, static_reason


def test_directions():
    assert better("val_loss") == better("val_loss/sigma_0.1") == better("fvd") == better("fd_clip-tiny") == "lower"
    assert better("motion_fidelity") == better("temporal_consistency") == "higher"
    assert better("n_videos") is None and better("motion_magnitude") is None and better("unknown") is None
    assert direction("temporal_consistency").needs_motion and not direction("val_loss").needs_motion
    assert is_uncertainty("se/val_loss") and is_uncertainty("n/fd_x") and not is_uncertainty("val_loss/sigma_1")


def test_not_worse_follows_the_direction():
    assert not_worse("val_loss", 0.5, 0.6) and not not_worse("val_loss", 0.7, 0.6) and not_worse("fvd", 1, 1)
    assert not_worse("motion_fidelity", 0.9, 0.2) and not not_worse("motion_fidelity", 0.2, 0.9)
    with pytest.raises(ValueError, match="no better direction"):
        not_worse("n_videos", 1, 2)


def test_a_frozen_video_cannot_rank_on_temporal_consistency():
    frozen = {"temporal_consistency": 1.0, "motion_magnitude": 0.01, "motion_magnitude_real": 2.0}
    moving = {**frozen, "temporal_consistency": 0.8, "motion_magnitude": 1.5}
    assert "static" in rank_blocker("temporal_consistency", frozen, 0.1)
    assert rank_blocker("temporal_consistency", moving, 0.1) is None
    assert "needs motion_magnitude" in rank_blocker("temporal_consistency", {"temporal_consistency": 1.0}, 0.1)
    assert rank_blocker("val_loss", frozen | {"val_loss": 0.3}, 0.1) is None  # static samples say nothing of loss
    assert "NaN" in rank_blocker("val_loss", {"val_loss": math.nan}, 0.1)
    assert static_reason({"motion_magnitude": 0.0, "motion_magnitude_real": 0.0}, 0.1) is None  # real is static too
