"""Great Expectations 1.x suites for the videos and clips tables, and ``validate`` that runs one on a DataFrame.

``videos`` (``metadata/videos.parquet``, one row per input):
  the contract's columns present with their types; ``status`` in {accepted, rejected}; ``reason`` non-empty for
  rejected rows and empty for accepted ones; accepted rows have a non-empty, unique ``video_id``, ``duration_s``,
  ``fps`` > 0, ``width``/``height`` >= 1, ``num_frames`` >= 2 and a codec; ``source_uri`` present and unique.
  Rejected rows may lack every probe value (an unreadable file has none).

``clips`` (``metadata/clips.parquet``, one row per shot, half-open ``[start_frame, end_frame)``):
  the contract's columns present with their types; ``clip_id`` present, unique and equal to
  ``clips_table.clip_id(video_id, start_frame, end_frame)``; ``start_frame`` >= 0, ``end_frame`` > ``start_frame``;
  ``start_s`` >= 0, ``duration_s``/``fps`` > 0, ``width``/``height`` >= 1, ``num_frames`` >= 1; durations
  consistent (``num_frames`` = ``end_frame - start_frame``, ``duration_s`` = ``end_s - start_s`` within 1 ms and
  = ``num_frames / fps`` within one frame); no two clips of a video overlap; ``text_area_ratio`` in [0, 1],
  ``clip_text_similarity`` in [-1, 1], ``motion_score`` >= 0; ``error`` never null.
  NaN policy (decided here): motion may be NaN on any row (a shot shorter than two 2-fps samples has no flow).
  Text area, aesthetics, CLIP similarity and the caption come from the sampled first/middle/last frames, which
  every shot has, so they must be present on rows with ``error == ""``; rows with an error may lack any score.

Checks that span rows (overlap, consistency, id derivation) are computed with pandas into helper boolean columns
(``_check_*``; null where the inputs are missing or the range is invalid, which other expectations report) and
then expected to be True by GX, so they are GX results like the rest and their failing rows are known.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from functools import cache

import pandas as pd

from curation.clips_table import CLIP_COLUMNS, clip_id
from curation.ingest import VIDEO_COLUMNS

MAX_ROWS = 20  # offending rows shown; the counts cover all of them
ID_COLUMNS = {"videos": ["video_id", "source_uri", "status"], "clips": ["clip_id", "video_id", "start_frame",
                                                                       "end_frame"]}
# Accepted physical dtypes per contract dtype. GX 1.24 matches pandas extension dtypes by their class name.
TYPE_LISTS = {
    "string": ["StringDtype", "str"],  # "str": object columns, checked value by value
    "int64": ["int64", "int32", "Int64Dtype", "Int32Dtype"],
    "Int64": ["int64", "int32", "Int64Dtype", "Int32Dtype"],
    "float64": ["float64", "float32", "Float64Dtype"],
}


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame field has no truth value to compare by
class ValidationOutcome:
    suite: str
    success: bool
    rows: int
    evaluated: int
    failures: list[dict]  # per failing expectation: label, expectation, columns, counts, missing columns, exception
    failing_rows: pd.DataFrame  # up to MAX_ROWS offending rows: ids, what they fail, the offending values
    rendered: str = field(repr=False)  # GX's markdown rendering of the validation result
    seconds: float = 0.0  # helper columns, GX run and rendering; the once-per-process setup is not included

    def failing_rows_markdown(self) -> str:
        if self.failing_rows.empty:
            return "no failing rows" if self.success else "no row-level failures (see the failing expectations)"
        shown = self.failing_rows.astype(object).where(self.failing_rows.notna(), "null")
        text = shown.map(lambda v: str(v).replace("|", "/").replace("\n", " ")[:120])
        return text.to_markdown(index=False)


# ---- the suites -------------------------------------------------------------------------------------------


def _expect(kind: str, label: str, shows: list[str] | None = None, **kwargs):
    """One expectation; ``label`` names it in reports, ``shows`` are the columns to print for its failing rows."""
    import great_expectations as gx

    cls = getattr(gx.expectations, kind)
    columns = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return cls(description=label, meta={"label": label, "shows": shows or columns}, **kwargs)


def _types(columns: dict[str, str]) -> list:
    return [_expect("ExpectColumnValuesToBeInTypeList", f"{c} is {t}", column=c, type_list=TYPE_LISTS[t])
            for c, t in columns.items() if t in TYPE_LISTS]


def _where(column: str, value: str):
    from great_expectations.expectations.row_conditions import Column

    return Column(column) == value


def _videos_suite() -> list:
    contract = list(VIDEO_COLUMNS)[:10]  # the data contract's columns; ingestion's bookkeeping columns are optional
    acc = _where("status", "accepted")
    out = [_expect("ExpectTableColumnsToMatchSet", "required columns present", column_set=contract,
                   exact_match=False), *_types({c: VIDEO_COLUMNS[c] for c in contract})]
    out += [_expect("ExpectColumnValuesToNotBeNull", f"{c} present", column=c)
            for c in ("status", "reason", "source_uri")]
    out += [
        _expect("ExpectColumnValuesToBeInSet", "status is accepted or rejected", column="status",
                value_set=["accepted", "rejected"]),
        _expect("ExpectColumnValuesToBeUnique", "source_uri unique", column="source_uri"),
        _expect("ExpectColumnValueLengthsToBeBetween", "rejected rows have a reason", column="reason",
                min_value=1, row_condition=_where("status", "rejected")),
        _expect("ExpectColumnValuesToBeInSet", "accepted rows have no reason", column="reason", value_set=[""],
                row_condition=acc),
        _expect("ExpectColumnValuesToBeUnique", "video_id unique among accepted", column="video_id",
                row_condition=acc),
        _expect("ExpectColumnValueLengthsToBeBetween", "accepted video_id non-empty", column="video_id",
                min_value=1, row_condition=acc),
    ]
    out += [_expect("ExpectColumnValuesToNotBeNull", f"accepted {c} present", column=c, row_condition=acc)
            for c in ("video_id", "duration_s", "fps", "width", "height", "num_frames", "codec")]
    out += [_expect("ExpectColumnValuesToBeBetween", f"accepted {c} > 0", column=c, min_value=0, strict_min=True,
                    row_condition=acc) for c in ("duration_s", "fps", "width", "height")]
    out.append(_expect("ExpectColumnValuesToBeBetween", "accepted num_frames >= 2", column="num_frames",
                       min_value=2, row_condition=acc))
    return out


def _clips_suite() -> list:
    contract = list(CLIP_COLUMNS)
    ok = _where("error", "")
    frames, times = ["start_frame", "end_frame"], ["start_s", "end_s", "duration_s", "num_frames", "fps"]
    out = [_expect("ExpectTableColumnsToMatchSet", "required columns present", column_set=contract,
                   exact_match=False), *_types(CLIP_COLUMNS)]
    out += [_expect("ExpectColumnValuesToNotBeNull", f"{c} present", column=c)
            for c in ("clip_id", "video_id", "start_frame", "end_frame", "start_s", "end_s", "duration_s", "fps",
                      "width", "height", "num_frames", "error")]
    out += [
        _expect("ExpectColumnValuesToBeUnique", "clip_id unique", column="clip_id"),
        _expect("ExpectColumnValuesToBeInSet", "clip_id = clips_table.clip_id(video, range)",
                ["clip_id", *frames], column="_check_clip_id", value_set=[True]),
        _expect("ExpectColumnValueLengthsToBeBetween", "video_id non-empty", column="video_id", min_value=1),
        _expect("ExpectColumnValuesToBeBetween", "start_frame >= 0", column="start_frame", min_value=0),
        _expect("ExpectColumnPairValuesAToBeGreaterThanB", "end_frame > start_frame", column_A="end_frame",
                column_B="start_frame", or_equal=False),
        _expect("ExpectColumnValuesToBeBetween", "start_s >= 0", column="start_s", min_value=0),
        _expect("ExpectColumnValuesToBeInSet", "durations consistent", [*frames, *times],
                column="_check_durations", value_set=[True]),
        _expect("ExpectColumnValuesToBeInSet", "no overlapping clips within a video", frames,
                column="_check_no_overlap", value_set=[True]),
        _expect("ExpectColumnValuesToBeBetween", "num_frames >= 1", column="num_frames", min_value=1),
        _expect("ExpectColumnValuesToBeBetween", "text_area_ratio in [0, 1]", column="text_area_ratio",
                min_value=0, max_value=1),
        _expect("ExpectColumnValuesToBeBetween", "clip_text_similarity in [-1, 1]",
                column="clip_text_similarity", min_value=-1, max_value=1),
        _expect("ExpectColumnValuesToBeBetween", "motion_score >= 0", column="motion_score", min_value=0),
        _expect("ExpectColumnValueLengthsToBeBetween", "caption non-empty where no error", ["caption", "error"],
                column="caption", min_value=1, row_condition=ok),
    ]
    out += [_expect("ExpectColumnValuesToBeBetween", f"{c} > 0", column=c, min_value=0, strict_min=True)
            for c in ("duration_s", "fps", "width", "height")]
    out += [_expect("ExpectColumnValuesToNotBeNull", f"{c} present where no error", [c, "error"], column=c,
                    row_condition=ok)
            for c in ("caption", "text_area_ratio", "aesthetic_score", "clip_text_similarity")]
    return out


SUITES = {"videos": _videos_suite, "clips": _clips_suite}


# ---- helper columns ----------------------------------------------------------------------------------------


def _flag(frame: pd.DataFrame, applicable: pd.Series, good: pd.Series) -> pd.Series:
    """True/False where applicable, null elsewhere (GX skips nulls in these map expectations)."""
    out = pd.Series(pd.NA, index=frame.index, dtype="boolean")
    out[applicable] = good[applicable].astype(bool)
    return out


def _no_overlap(frame: pd.DataFrame, valid: pd.Series) -> pd.Series:
    """Sorted by video and start, a clip overlaps if it starts before an earlier clip ends or ends after the next
    one starts; both clips of an overlapping pair are flagged, so the table shows each pair."""
    sub = frame.loc[valid, ["video_id", "start_frame", "end_frame"]].sort_values(
        ["video_id", "start_frame", "end_frame"], kind="stable")
    by_video = sub.groupby("video_id", sort=False)
    earlier_end = by_video["end_frame"].cummax().groupby(sub["video_id"], sort=False).shift()
    next_start = by_video["start_frame"].shift(-1)
    overlap = (sub["start_frame"] < earlier_end).fillna(False) | (sub["end_frame"] > next_start).fillna(False)
    return _flag(frame, valid, ~overlap.reindex(frame.index, fill_value=False))


def _add_clip_helpers(frame: pd.DataFrame) -> pd.DataFrame:
    f = frame
    numbers = ["start_frame", "end_frame", "start_s", "end_s", "duration_s", "fps", "num_frames"]
    # Missing or non-numeric inputs: the column-set and type expectations report them; the helpers abstain.
    if not {"clip_id", "video_id", *numbers} <= set(f.columns) or not all(
            pd.api.types.is_numeric_dtype(f[c]) for c in numbers):
        return f.assign(_check_clip_id=pd.NA, _check_durations=pd.NA, _check_no_overlap=pd.NA)
    ids = f[["video_id", "start_frame", "end_frame"]].notna().all(axis=1)
    valid = ids & (f["end_frame"] > f["start_frame"]).fillna(False)
    expected_id = [clip_id(v, int(s), int(e)) if ok else None
                   for v, s, e, ok in zip(f["video_id"], f["start_frame"], f["end_frame"], ids)]
    id_ok = (f["clip_id"] == pd.Series(expected_id, index=f.index, dtype="string")).fillna(False)
    times = f[numbers].notna().all(axis=1) & valid
    fps = f["fps"].astype("float64").where(f["fps"] > 0)
    consistent = ((f["num_frames"] == f["end_frame"] - f["start_frame"])
                  & ((f["end_s"] - f["start_s"] - f["duration_s"]).abs() <= 1e-3)
                  & ((f["duration_s"] - f["num_frames"] / fps).abs() <= 1.0 / fps + 1e-6)).fillna(False)
    return f.assign(_check_clip_id=_flag(f, ids, id_ok), _check_durations=_flag(f, times, consistent),
                    _check_no_overlap=_no_overlap(f, valid))


def _prepare(frame: pd.DataFrame, suite_name: str) -> pd.DataFrame:
    # Positional index, so GX's unexpected indices address rows of this frame.
    frame = frame.reset_index(drop=True)
    # pandas 3's default `str` dtype (NaN-missing) holds the same values as "string" but GX 1.24 does not
    # recognise it; relabel it so the type expectations judge the values, not the missing-value marker.
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.StringDtype) and frame[col].dtype.na_value is not pd.NA:
            frame[col] = frame[col].astype("string")
    return _add_clip_helpers(frame) if suite_name == "clips" else frame


# ---- running GX ---------------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # one GX context per process; GX contexts are not thread-safe


@cache
def _definitions() -> dict:
    """Build the ephemeral context, suites and validation definitions once per process (GX setup is slow)."""
    import great_expectations as gx  # imported here: it costs seconds and the code location loads without it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("svdpipe")
    out = {}
    for name, build in SUITES.items():
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=build()))
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        out[name] = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    return out


def _render(result) -> str:
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultMarkdownPageView

    text = DefaultMarkdownPageView().render(ValidationResultsPageRenderer().render(result))
    lines = [line.strip() for line in text.splitlines()]
    # GX's template leaves long runs of blank lines and a pandas snippet per failure; keep the content only.
    lines = [line for line in lines if not line.startswith("df.filter(") and "Powered by" not in line]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip().rstrip("-").strip() + "\n"


def _exception(info: dict | None) -> str | None:
    """GX reports an exception either directly or per metric that raised it; keep the first message."""
    info = info or {}
    if info.get("exception_message"):
        return str(info["exception_message"])
    nested = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    return next((str(m) for m in nested if m), None)


def _pick_rows(failing: list[tuple[dict, list[int]]]) -> list[int]:
    """Round-robin over the failing expectations, so every failure kind shows some rows."""
    picked: dict[int, None] = {}
    queues = [list(idx) for _, idx in failing]
    while len(picked) < MAX_ROWS and any(queues):
        for q in queues:
            while q and q[0] in picked:
                q.pop(0)
            if q and len(picked) < MAX_ROWS:
                picked[q.pop(0)] = None
    return sorted(picked)


def _failing_rows(frame: pd.DataFrame, suite_name: str, failing: list[tuple[dict, list[int]]]) -> pd.DataFrame:
    rows = _pick_rows(failing)
    ids = [c for c in ID_COLUMNS[suite_name] if c in frame.columns]
    shows = [c for info, _ in failing for c in info["shows"] if c in frame.columns and c not in ids]
    out = frame.loc[rows, ids + list(dict.fromkeys(shows))].copy()
    failed = {r: [info["label"] for info, idx in failing if r in idx] for r in rows}
    out.insert(len(ids), "failed", ["; ".join(failed[r]) for r in rows])
    out.insert(0, "row", rows)
    return out.reset_index(drop=True)


def validate(frame: pd.DataFrame, suite_name: str) -> ValidationOutcome:
    """Run the named suite ("videos" or "clips") on ``frame`` with GX; never raises for bad data."""
    if suite_name not in SUITES:
        raise ValueError(f"unknown suite {suite_name!r}; available: {', '.join(SUITES)}")
    with _LOCK:
        definition = _definitions()[suite_name]
        start = time.perf_counter()
        data = _prepare(frame, suite_name)
        result = definition.run(batch_parameters={"dataframe": data},
                                result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_ROWS})
    rendered = _render(result)
    seconds = time.perf_counter() - start
    failures, failing = [], []
    for res in result.results:
        if res.success:
            continue
        cfg, details = res.expectation_config, res.result or {}
        info = {"label": cfg.meta.get("label", cfg.type), "expectation": cfg.type,
                "columns": [cfg.kwargs[k] for k in ("column", "column_A", "column_B") if k in cfg.kwargs],
                "unexpected_count": details.get("unexpected_count"),
                "missing_columns": (details.get("details") or {}).get("mismatched", {}).get("missing"),
                "observed_value": None if cfg.type == "expect_table_columns_to_match_set"
                else details.get("observed_value"),
                "exception": _exception(res.exception_info)}
        failures.append({k: v for k, v in info.items() if v not in (None, [])})
        if details.get("partial_unexpected_index_list"):
            failing.append(({"label": info["label"], "shows": cfg.meta.get("shows", [])},
                            [int(i) for i in details["partial_unexpected_index_list"]]))
    return ValidationOutcome(suite=suite_name, success=bool(result.success), rows=len(data),
                             evaluated=len(result.results), failures=failures,
                             failing_rows=_failing_rows(data, suite_name, failing), rendered=rendered,
                             seconds=seconds)
