import numpy as np
import pandas as pd
import pytest

from curation.clips_table import to_frame
from curation.variants import select
from svdpipe.config import load_config


from svdpipe.config_schema import ScoreFilter, VariantConfig
def _clips(n=100, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"clip_id": f"v-{i:07d}-{i + 1:07d}", "video_id": "v", "start_frame": i, "end_frame": i + 1,
             "duration_s": 1.0 + (i % 5), "motion_score": float(i), "text_area_ratio": float(rng.uniform(0, 0.2)),
             "aesthetic_score": float(rng.normal()), "clip_text_similarity": float(rng.uniform(-1, 1)),
             "caption": "c", "error": "", "width": 64, "height": 36, "num_frames": 1, "start_s": 0.0, "end_s": 1.0,
             "fps": 24.0} for i in range(n)]
    return to_frame(rows)


def test_uncurated_keeps_every_usable_clip():
    clips = _clips()
    clips.loc[3, "error"] = "decode failed"
    sel = select(clips, "uncurated", VariantConfig(min_duration_s=2.0))
    assert sel.total == 100 and sel.pool == len(sel.kept) == int(((clips["duration_s"] >= 2) & (clips["error"] == "")).sum())


def test_percentile_filters_resolve_to_thresholds():
    clips = _clips()
    v = VariantConfig(min_duration_s=0, filters=(ScoreFilter(score="motion_score", drop_lowest_pct=25),))
    sel = select(clips, "m", v)
    assert sel.thresholds["motion_score"]["min"] == pytest.approx(np.percentile(np.arange(100), 25))
    assert len(sel.kept) == 75 and sel.kept["motion_score"].min() >= 24.75


def test_absolute_and_percentile_bounds_take_the_tighter():
    clips = _clips()
    v = VariantConfig(min_duration_s=0,
                      filters=(ScoreFilter(score="text_area_ratio", drop_highest_pct=25, max=0.07),))
    sel = select(clips, "t", v)
    assert sel.thresholds["text_area_ratio"]["max"] == 0.07
    assert (sel.kept["text_area_ratio"] <= 0.07).all()


def test_svd_variant_applies_every_filter_to_the_same_pool():
    clips = _clips(400, seed=1)
    cfg = load_config("tiny", environ={})
    sel = select(clips, "svd", cfg.variants["svd"])
    assert set(sel.kept_by_filter) == {"not_duplicate", "motion_score", "text_area_ratio", "aesthetic_score",
                                       "clip_text_similarity"}
    assert sel.kept_by_filter["motion_score"] == pytest.approx(0.75 * sel.pool, abs=2)
    assert sel.kept_by_filter["clip_text_similarity"] == pytest.approx(0.5 * sel.pool, abs=2)
    assert len(sel.kept) <= min(sel.kept_by_filter.values())


def test_missing_scores_never_pass_a_filter_and_thresholds_never_rescore():
    clips = _clips()
    clips.loc[:9, "motion_score"] = np.nan
    v = VariantConfig(min_duration_s=0, filters=(ScoreFilter(score="motion_score", min=0),))
    before = clips.copy()
    sel = select(clips, "m", v)
    assert len(sel.kept) == 90
    pd.testing.assert_frame_equal(clips, before)  # selection is a read-only view of the scores


def test_fingerprint_tracks_selection():
    clips = _clips()
    a = select(clips, "a", VariantConfig(min_duration_s=0, filters=(ScoreFilter(score="motion_score", min=10),)))
    b = select(clips, "a", VariantConfig(min_duration_s=0, filters=(ScoreFilter(score="motion_score", min=10),)))
    c = select(clips, "a", VariantConfig(min_duration_s=0, filters=(ScoreFilter(score="motion_score", min=20),)))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_drop_duplicates_drops_the_later_copy_only():
    clips = _clips(10)
    clips.loc[4, "duplicate_of"] = clips.at[1, "clip_id"]
    clips.loc[7, "duplicate_of"] = clips.at[1, "clip_id"]
    sel = select(clips, "d", VariantConfig(min_duration_s=0, drop_duplicates=True))
    assert sel.kept_by_filter["not_duplicate"] == 8 and len(sel.kept) == 8
    assert clips.at[1, "clip_id"] in set(sel.kept["clip_id"])
    assert not {clips.at[4, "clip_id"], clips.at[7, "clip_id"]} & set(sel.kept["clip_id"])
    assert len(select(clips, "u", VariantConfig(min_duration_s=0)).kept) == 10
    assert load_config("tiny", environ={}).variants["svd"].drop_duplicates
