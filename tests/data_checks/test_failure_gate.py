import pandas as pd

from data_checks.failure_gate import failure_gate, scoring_failed
from table_fixtures import _row
from curation.clips_table import to_frame


def _clips(n_ok: int, failures: dict[str, str], unscored: int = 0) -> pd.DataFrame:
    rows = [_row(f"ok{i // 10}", 10 * (i % 10), 10 * (i % 10) + 10) for i in range(n_ok)]
    rows += [_row(v, 0, 10, error=e, caption="") for v, e in failures.items()]
    rows += [_row(f"short{i}", 0, 1, error="unscored: shorter than one sample interval") for i in range(unscored)]
    return to_frame(rows)


def test_unscored_short_shots_are_not_failures():
    clips = _clips(2, {"bad": "scoring failed: RuntimeError: boom"}, unscored=3)
    assert scoring_failed(clips).tolist() == [False, False, True, False, False, False]


def test_gate_passes_at_the_limit_and_fails_over_it():
    at_limit = failure_gate(_clips(99, {"v1": "scoring failed: ValueError: x"}), 0.01)
    assert at_limit.passed and at_limit.failed == 1 and at_limit.clips == 100
    over = failure_gate(_clips(98, {"v1": "scoring failed: ValueError: x", "v2": "decode failed: EOF"}), 0.01)
    assert not over.passed and over.fraction == 0.02
    assert "2 of 100 clips failed scoring (2.00%), over checks.max_error_fraction = 1.00%" == over.summary()
    assert over.validation is not None and not over.validation.success  # a GX result, shown in the UI


def test_gate_lists_each_failing_video_with_its_reason_and_source():
    clips = _clips(5, {"v1": "decode failed: InvalidDataError: moov atom not found", "v2": "scoring failed: boom"})
    clips = pd.concat([clips, to_frame([_row("v1", 10, 20, error="decode failed: later")])], ignore_index=True)
    videos = pd.DataFrame({"video_id": ["v1", "v2"], "source_uri": ["/in/a.mp4", "https://x/b.mp4?sig=***"]})
    gate = failure_gate(clips, 0.5, videos)
    assert gate.passed
    assert gate.by_video.to_dict("records") == [
        {"video_id": "v1", "source_uri": "/in/a.mp4", "failed": 2, "clips": 2,
         "reason": "decode failed: InvalidDataError: moov atom not found"},
        {"video_id": "v2", "source_uri": "https://x/b.mp4?sig=***", "failed": 1, "clips": 1,
         "reason": "scoring failed: boom"}]
    assert "moov atom not found" in gate.by_video_markdown()


def test_an_empty_table_passes():
    gate = failure_gate(to_frame([]), 0.0)
    assert gate.passed and gate.fraction == 0.0 and gate.by_video_markdown() == "no clip failed scoring"
