import math

import pandas as pd
import pytest

from curation import ingest
from curation.clips_table import clip_id, to_frame
from data_checks import suites
from data_checks.suites import validate
from svdpipe.storage import open_storage


def _labels(outcome) -> set[str]:
    return {f["label"] for f in outcome.failures}


def _rows_by_label(outcome) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for row, failed in zip(outcome.failing_rows["row"], outcome.failing_rows["failed"]):
        for label in failed.split("; "):
            out.setdefault(label, set()).add(int(row))
    return out


def test_clean_clips_table_passes(clips_frame):
    outcome = validate(clips_frame, "clips")
    assert outcome.success, outcome.failures
    assert outcome.failures == [] and outcome.failing_rows.empty
    assert outcome.rows == len(clips_frame) and outcome.evaluated > 40
    assert "Succeeded" in outcome.rendered and "no overlapping clips within a video" in outcome.rendered
    assert 0 < outcome.seconds < 30
    print(f"clips validation: {outcome.seconds:.2f} s for {outcome.evaluated} expectations")


def test_corrupted_clips_table_reports_each_fault_and_its_rows(corrupted_clips):
    bad, expected = corrupted_clips
    outcome = validate(bad, "clips")
    assert not outcome.success
    assert set(expected) <= _labels(outcome)
    reported = _rows_by_label(outcome)
    for label, rows in expected.items():
        assert reported[label] == rows, label
    counts = {f["label"]: f["unexpected_count"] for f in outcome.failures}
    assert counts["clip_id unique"] == 2 and counts["no overlapping clips within a video"] == 2
    table = outcome.failing_rows.set_index("row")
    assert table.at[7, "text_area_ratio"] == 1.7 and table.at[7, "clip_id"] == bad.at[7, "clip_id"]
    assert table.at[2, "start_frame"] == table.at[2, "end_frame"] == 130
    assert table.at[4, "start_frame"] == 40 and table.at[6, "caption"] == ""
    markdown = outcome.failing_rows_markdown()
    assert bad.at[7, "clip_id"] in markdown and "1.7" in markdown and "end_frame > start_frame" in markdown
    assert "Failed" in outcome.rendered and "text_area_ratio in [0, 1]" in outcome.rendered


def test_nan_scores_follow_the_error_column(clips_frame):
    # The clean table already has NaN motion on a one-frame shot and NaN scores on the row with an error.
    assert clips_frame["motion_score"].isna().sum() == 2 and validate(clips_frame, "clips").success
    frame = clips_frame.copy()
    frame.loc[0, "text_area_ratio"] = math.nan  # computable on every shot, so missing only with an error
    frame.loc[1, "caption"] = pd.NA
    frame.loc[3, "motion_score"] = -0.5
    frame.loc[5, "clip_text_similarity"] = 1.5
    outcome = validate(frame, "clips")
    reported = _rows_by_label(outcome)
    assert reported["text_area_ratio present where no error"] == {0}
    assert reported["caption present where no error"] == {1}
    assert reported["motion_score >= 0"] == {3}
    assert reported["clip_text_similarity in [-1, 1]"] == {5}


def test_overlap_is_per_video_and_half_open():
    rows = [dict(video_id=v, start_frame=s, end_frame=e) for v, s, e in
            [("a", 0, 10), ("a", 10, 20), ("b", 5, 15), ("a", 20, 40), ("a", 25, 30), ("b", 15, 16)]]
    frame = pd.DataFrame(rows).assign(clip_id=lambda f: [clip_id(*r) for r in f[["video_id", "start_frame",
                                                                                   "end_frame"]].values])
    valid = frame["end_frame"] > frame["start_frame"]
    flags = suites._no_overlap(frame, valid)
    # [25, 30) lies inside [20, 40); shared boundaries and the other video's clips are fine.
    assert flags.tolist() == [True, True, True, False, False, True]


def test_inconsistent_durations_and_derived_id(clips_frame):
    frame = clips_frame.copy()
    frame.loc[0, "num_frames"] = 47
    frame.loc[1, "duration_s"] = 9.0
    frame.loc[3, "clip_id"] = "something-else"
    outcome = validate(frame, "clips")
    reported = _rows_by_label(outcome)
    assert reported["durations consistent"] == {0, 1}
    assert reported["clip_id = clips_table.clip_id(video, range)"] == {3}


def test_missing_columns_and_wrong_types_fail_without_crashing(clips_frame):
    broken = clips_frame.drop(columns=["caption", "end_frame"]).assign(start_frame=clips_frame["start_frame"]
                                                                       .astype(str))
    outcome = validate(broken, "clips")
    failures = {f["label"]: f for f in outcome.failures}
    assert failures["required columns present"]["missing_columns"] == ["caption", "end_frame"]
    assert failures["start_frame is int64"]["observed_value"] == "str"
    assert "does not exist" in failures["end_frame present"]["exception"]


def test_failing_rows_are_capped_and_cover_every_failure(clips_frame):
    many = pd.concat([clips_frame.iloc[[0]]] * 40, ignore_index=True)
    many["video_id"] = [f"v{i}" for i in range(len(many))]
    many["clip_id"] = [clip_id(v, 0, 48) for v in many["video_id"]]
    many["text_area_ratio"] = 1.7
    many.loc[35:, "end_frame"] = 0  # five rows with an empty range, listed after thirty-five bad ratios
    outcome = validate(many, "clips")
    counts = {f["label"]: f["unexpected_count"] for f in outcome.failures}
    assert counts["text_area_ratio in [0, 1]"] == 40 and counts["end_frame > start_frame"] == 5
    assert len(outcome.failing_rows) == suites.MAX_ROWS
    assert outcome.failing_rows["failed"].str.contains("end_frame > start_frame").sum() >= 5


def test_pandas_default_string_dtype_is_accepted(clips_frame):
    # pandas 3 reads strings as `str` (NaN as missing) when no schema says otherwise.
    plain = clips_frame.astype({c: "str" for c in ("clip_id", "video_id", "caption", "error")})
    assert str(plain["clip_id"].dtype) == "str"
    assert validate(plain, "clips").success


def test_empty_tables_pass():
    assert validate(to_frame([]), "clips").success
    assert validate(ingest.to_frame([]), "videos").success


def test_real_videos_table_passes(ingested_root):
    table = ingest.read_table(open_storage(ingested_root))
    assert set(table["status"]) == {"accepted", "rejected"}
    outcome = validate(table, "videos")
    assert outcome.success, outcome.failures
    print(f"videos validation: {outcome.seconds:.2f} s for {outcome.evaluated} expectations")


def test_corrupted_videos_table_reports_each_fault(ingested_root):
    table = ingest.read_table(open_storage(ingested_root))
    acc = table.index[table["status"] == "accepted"].tolist()
    rej = table.index[table["status"] == "rejected"].tolist()
    bad = table.copy()
    bad.loc[acc[0], "reason"] = "looked odd"
    bad.loc[acc[1], ["fps", "num_frames"]] = [0.0, 1]
    bad.loc[rej[0], "reason"] = ""
    bad.loc[rej[1], "status"] = "maybe"
    dup = bad.loc[[acc[0]]].assign(source_uri="file:///copy.mp4")  # same content accepted twice
    bad = pd.concat([bad, dup], ignore_index=True)
    outcome = validate(bad, "videos")
    reported = _rows_by_label(outcome)
    assert reported["accepted rows have no reason"] == {acc[0], len(bad) - 1}
    assert reported["accepted fps > 0"] == {acc[1]}
    assert reported["accepted num_frames >= 2"] == {acc[1]}
    assert reported["rejected rows have a reason"] == {rej[0]}
    assert reported["status is accepted or rejected"] == {rej[1]}
    assert reported["video_id unique among accepted"] == {acc[0], len(bad) - 1}
    # Rejected rows without probe values, and repeated ids among rejected rows, are fine.
    assert "accepted duration_s present" not in _labels(outcome)


def test_suites_are_built_once_and_unknown_names_refused(clips_frame):
    assert suites._definitions() is suites._definitions()
    with pytest.raises(ValueError, match="unknown suite"):
        validate(clips_frame, "nope")


def test_duplicate_of_must_name_an_earlier_clip(clips_frame):
    ids = clips_frame["clip_id"]
    good = clips_frame.copy()
    good.loc[1, "duplicate_of"] = ids[0]  # a later clip of the same video copies an earlier one
    good.loc[3, "duplicate_of"] = ids[2]  # across videos: vid_b comes after vid_a
    assert validate(good, "clips").success
    bad = good.copy()
    bad.loc[0, "duplicate_of"] = ids[1]  # points forward
    bad.loc[4, "duplicate_of"] = ids[4]  # itself
    bad.loc[5, "duplicate_of"] = "vid_x-0000000-0000010"  # no such clip
    outcome = validate(bad, "clips")
    assert not outcome.success
    assert _rows_by_label(outcome)["duplicate_of names an earlier clip"] == {0, 4, 5}
