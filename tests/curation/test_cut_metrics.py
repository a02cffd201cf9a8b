import pytest

from curation.cut_metrics import match_cuts, merge_counts
from curation.cuts import Cut


def hard(frame):
    return {"frame": frame, "kind": "hard", "style": "hard"}


def fade(frame, start, end):
    return {"frame": frame, "kind": "fade", "style": "dissolve", "start": start, "end": end}


def counts(result, kind):
    return result[kind]["tp"], result[kind]["fp"], result[kind]["fn"]


def test_exact_and_tolerated_hits():
    truth = [hard(50), fade(120, 110, 131), hard(200)]
    r = match_cuts([Cut(52, "hard", ("full",)), Cut(108, "fade", ("sub4",)), Cut(198, "hard", ("full",))], truth)
    assert counts(r, "hard") == (2, 0, 0)
    assert counts(r, "fade") == (1, 0, 0)
    assert r["overall"]["f1"] == 1.0
    assert r["matches"] == [(52, 50), (108, 120), (198, 200)]


def test_outside_tolerance_is_a_miss_and_a_false_positive():
    truth = [hard(50), fade(120, 110, 131)]
    r = match_cuts([Cut(53, "hard", ("full",)), Cut(134, "fade", ("sub4",))], truth)
    assert counts(r, "hard") == (0, 1, 1)
    assert counts(r, "fade") == (0, 1, 1)
    assert counts(r, "overall") == (0, 2, 2)
    assert r["overall"]["precision"] == 0.0 and r["overall"]["recall"] == 0.0 and r["overall"]["f1"] == 0.0


def test_fade_window_edges_are_inclusive():
    truth = [fade(120, 110, 131)]
    assert match_cuts([108], truth)["fade"]["tp"] == 1
    assert match_cuts([133], truth)["fade"]["tp"] == 1
    assert match_cuts([107], truth)["fade"]["tp"] == 0
    assert match_cuts([134], truth, tol=3)["fade"]["tp"] == 1


def test_one_prediction_matches_one_truth_cut():
    # Two truth cuts within tolerance of one prediction: one is found, one is missed.
    r = match_cuts([Cut(11, "hard", ("full",))], [hard(10), hard(12)])
    assert counts(r, "hard") == (1, 0, 1)
    # Two predictions for one truth cut: the second is a false positive.
    r = match_cuts([Cut(10, "hard", ("full",)), Cut(11, "hard", ("full",))], [hard(10)])
    assert counts(r, "hard") == (1, 1, 0)


def test_matching_is_maximal_when_windows_overlap():
    # The prediction at 11 could serve either cut; giving it to the fade would leave the hard cut unmatched.
    truth = [hard(10), fade(16, 11, 20)]
    r = match_cuts([11, 21], truth)
    assert counts(r, "overall") == (2, 0, 0)


def test_false_positives_take_the_predicted_kind():
    truth = [hard(100)]
    r = match_cuts([Cut(100, "hard", ("full",)), Cut(300, "fade", ("sub12",)), Cut(400, "hard", ("full",))], truth)
    assert counts(r, "hard") == (1, 1, 0)
    assert counts(r, "fade") == (0, 1, 0)
    assert counts(r, "overall") == (1, 2, 0)
    assert r["hard"]["precision"] == 0.5 and r["fade"]["precision"] == 0.0
    # A bare frame number has no kind: its false positive counts only overall.
    r = match_cuts([100, 300], truth)
    assert counts(r, "hard") == (1, 0, 0)
    assert counts(r, "overall") == (1, 1, 0)


def test_empty_cases():
    r = match_cuts([], [])
    assert all(r[k]["f1"] == 1.0 for k in ("hard", "fade", "overall"))
    r = match_cuts([], [hard(5)])
    assert counts(r, "hard") == (0, 0, 1) and r["hard"]["recall"] == 0.0 and r["hard"]["f1"] == 0.0
    assert r["fade"]["f1"] == 1.0  # nothing to find and nothing claimed
    r = match_cuts([Cut(5, "fade", ("black",))], [])
    assert counts(r, "fade") == (0, 1, 0) and r["fade"]["precision"] == 0.0


def test_merge_counts_pools_videos():
    a = match_cuts([10, 50], [hard(10), fade(52, 45, 58)])
    b = match_cuts([Cut(70, "hard", ("full",))], [hard(20)])
    pooled = merge_counts([a, b])
    assert counts(pooled, "overall") == (2, 1, 1)
    assert pooled["overall"]["precision"] == pytest.approx(2 / 3)
    assert pooled["overall"]["recall"] == pytest.approx(2 / 3)
    assert counts(pooled, "hard") == (1, 1, 1)
    assert counts(pooled, "fade") == (1, 0, 0)
