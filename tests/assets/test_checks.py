"""The asset checks in real Dagster runs: a stand-in ``clips`` asset, a downstream asset, a real SQLite instance."""

import dagster as dg
import pandas as pd
import pytest

from assets.ingestion import videos
from curation import ingest
from assets.checks import CLIPS_KEY, clips_table_check, videos_table_check
from assets.resources import SvdpipeResource


class ClipsSource(dg.Config):
    parquet: str  # the table this stand-in "computes"


@dg.asset(name="clips")
def clips_stand_in(config: ClipsSource, svdpipe: SvdpipeResource) -> None:
    """Writes a prepared table where the real clips asset will write metadata/clips.parquet."""
    ingest.write_table(svdpipe.storage, CLIPS_KEY, pd.read_parquet(config.parquet))


@dg.asset(deps=["clips"])
def curated(svdpipe: SvdpipeResource) -> None:
    """Downstream of clips, as the curated datasets are: it must not run on a table that failed its check."""
    svdpipe.storage.write_text("curated/marker.txt", "built")


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def _run_clips(tmp_path, instance, frame: pd.DataFrame):
    source = tmp_path / "prepared.parquet"
    frame.to_parquet(source, index=False)
    resource = SvdpipeResource(data_root=str(tmp_path / "root"))
    result = dg.materialize(
        [clips_stand_in, curated, clips_table_check],
        selection=dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks(),
        resources={"svdpipe": resource},
        run_config=dg.RunConfig(ops={"clips": ClipsSource(parquet=str(source))}),
        instance=instance,
        raise_on_error=False,
    )
    return result, resource


def _evaluation(result, asset: str):
    evaluations = result.get_asset_check_evaluations()
    assert [e.asset_key for e in evaluations] == [dg.AssetKey(asset)]
    return evaluations[0]


def test_clean_clips_table_passes_and_downstream_builds(tmp_path, instance, clips_frame):
    result, resource = _run_clips(tmp_path, instance, clips_frame)
    assert result.success
    evaluation = _evaluation(result, "clips")
    assert evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    meta = evaluation.metadata
    assert meta["rows"].value == len(clips_frame) and meta["failed_expectations"].value == 0
    assert "Succeeded" in meta["validation_result"].value
    assert meta["validation_seconds"].value > 0
    assert resource.storage.read_text("curated/marker.txt") == "built"
    # The evaluation is recorded in the instance, as the UI shows it.
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("clips"), "clips_table_check")])
    assert record[dg.AssetCheckKey(dg.AssetKey("clips"), "clips_table_check")].status.value == "SUCCEEDED"


def test_corrupted_clips_table_fails_reports_rows_and_blocks_downstream(tmp_path, instance, corrupted_clips):
    bad, expected = corrupted_clips
    result, resource = _run_clips(tmp_path, instance, bad)
    assert not result.success
    evaluation = _evaluation(result, "clips")
    assert not evaluation.passed and evaluation.blocking
    meta = evaluation.metadata
    failing = {f["label"] for f in meta["failing_expectations"].value}
    assert set(expected) <= failing
    rows_md = meta["failing_rows"].value
    for row in sorted(set().union(*expected.values())):
        assert bad.at[row, "clip_id"] in rows_md
    assert "1.7" in rows_md and "no overlapping clips within a video" in rows_md
    assert "Failed" in meta["validation_result"].value
    # Blocking: the clips table was written, but nothing downstream of it ran.
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {dg.AssetKey("clips")}
    assert [e.step_key for e in result.get_step_failure_events()] == ["clips_clips_table_check"]
    assert "curated" not in {e.step_key for e in result.all_events}  # never started
    assert not resource.storage.exists("curated/marker.txt")


def test_videos_check_passes_on_an_ingested_table(ingested_root, instance):
    resource = SvdpipeResource(data_root=str(ingested_root))
    result = dg.materialize([videos, videos_table_check], selection=dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks(),
                            resources={"svdpipe": resource}, instance=instance, raise_on_error=False)
    assert result.success
    evaluation = _evaluation(result, "videos")
    table = ingest.read_table(resource.storage)
    assert evaluation.passed, evaluation.metadata["failing_expectations"].value
    assert evaluation.metadata["rows"].value == len(table) > 2
    assert evaluation.metadata["failing_rows"].value == "no failing rows"


def test_clips_check_fails_when_the_table_is_missing(tmp_path, instance):
    result = dg.materialize([clips_table_check], selection=dg.AssetSelection.all_asset_checks(),
                            resources={"svdpipe": SvdpipeResource(data_root=str(tmp_path))}, instance=instance,
                            raise_on_error=False)
    evaluation = _evaluation(result, "clips")
    assert not evaluation.passed and "no table" in evaluation.description
