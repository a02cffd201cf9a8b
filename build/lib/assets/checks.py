"""Dagster asset checks that run the GX suites on the videos and clips tables.

Both are blocking with ERROR severity: a failing table stops every downstream asset in the same run (the curated
datasets are never built from a table that breaks the data contract). The check's metadata carries the failing
expectations, a markdown table of offending rows and GX's rendered validation result.
"""

import json

import dagster as dg

from curation import clips_table, ingest
from data_checks.suites import ValidationOutcome, validate
from assets.resources import SvdpipeResource
from svdpipe.storage import Storage

CLIPS_KEY = clips_table.CLIPS_KEY


def _jsonable(value):
    # Observed values can hold numpy scalars or tuples; metadata must be plain JSON.
    return json.loads(json.dumps(value, default=str))


def check_result(outcome: ValidationOutcome, path: str) -> dg.AssetCheckResult:
    failed_rows = sum(f.get("unexpected_count") or 0 for f in outcome.failures)
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if outcome.success else
        "failed: " + "; ".join(f["label"] for f in outcome.failures),
        metadata={
            "suite": outcome.suite,
            "path": dg.MetadataValue.path(path),
            "rows": outcome.rows,
            "evaluated_expectations": outcome.evaluated,
            "failed_expectations": len(outcome.failures),
            "unexpected_values": failed_rows,  # summed over expectations: a row failing two counts twice
            "failing_expectations": dg.MetadataValue.json(_jsonable(outcome.failures)),
            "failing_rows": dg.MetadataValue.md(outcome.failing_rows_markdown()),
            "validation_result": dg.MetadataValue.md(outcome.rendered),
            "validation_seconds": dg.MetadataValue.float(round(outcome.seconds, 3)),
        },
    )


def _validate_table(storage: Storage, key: str, suite: str) -> dg.AssetCheckResult:
    path = storage.uri(key)
    frame = ingest.read_optional(storage, key)
    if frame is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"no table at {path}", metadata={"path": dg.MetadataValue.path(path)})
    return check_result(validate(frame, suite), path)


@dg.asset_check(
    asset="videos",
    blocking=True,
    description="GX suite 'videos': contract columns and types, status/reason agreement, probe values of "
                "accepted videos, unique ids.",
)
def videos_table_check(svdpipe: SvdpipeResource) -> dg.AssetCheckResult:
    return _validate_table(svdpipe.storage, ingest.VIDEOS_KEY, "videos")


@dg.asset_check(
    asset="clips",
    blocking=True,
    description="GX suite 'clips': contract columns and types, unique and derived clip ids, valid half-open "
                "frame ranges, consistent durations, no overlapping clips, score ranges, captions present.",
)
def clips_table_check(svdpipe: SvdpipeResource) -> dg.AssetCheckResult:
    return _validate_table(svdpipe.storage, CLIPS_KEY, "clips")


asset_checks = [videos_table_check, clips_table_check]
