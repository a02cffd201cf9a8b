"""The failure gate in real Dagster runs: too many failed clips and no curated dataset is built."""

import shutil

import dagster as dg
import pandas as pd
import pytest

from assets.checks import CLIPS_KEY, clips_failure_gate
from assets.resources import SvdpipeResource
from curation import ingest
from table_fixtures import _row
from curation.clips_table import to_frame


@dg.asset(name="clips")
def clips_written(svdpipe: SvdpipeResource) -> None:
    """Stands for the scoring that produced the table; the check under test reads what it wrote."""
    rows = [_row(f"ok{i // 5}", 10 * (i % 5), 10 * (i % 5) + 10) for i in range(40)]
    rows.append(_row("vid_broken", 0, 100, error="scoring failed: RuntimeError: CUDA error: device-side assert"))
    ingest.write_table(svdpipe.storage, CLIPS_KEY, to_frame(rows))  # 1 of 41: 2.4 % failed


@dg.asset(deps=["clips"])
def curated(svdpipe: SvdpipeResource) -> None:
    svdpipe.storage.write_text("curated/marker.txt", "built")


@pytest.mark.parametrize("limit, builds", [(0.01, False), (0.05, True)])
def test_gate_blocks_the_curated_dataset_and_names_the_video(tmp_path, limit, builds):
    resource = SvdpipeResource(data_root=str(tmp_path / "root"), overrides=[f"checks.max_error_fraction={limit}"])
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.materialize([clips_written, curated, clips_failure_gate],
                                selection=dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks(),
                                resources={"svdpipe": resource}, instance=instance, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed == builds and evaluation.blocking
    assert resource.storage.exists("curated/marker.txt") == builds
    meta = evaluation.metadata
    assert (meta["failed_clips"].value, meta["clips"].value) == (1, 41)
    assert "vid_broken" in meta["failing_videos"].value and "device-side assert" in meta["failing_videos"].value
    assert evaluation.description.startswith("1 of 41 clips failed scoring (2.44%)")


def test_a_video_broken_in_storage_stops_svdpipe_curate(curated_copy, cli):
    """A real failure, not a planted row: an accepted video corrupted in storage since fails to decode."""
    root = curated_copy
    videos = pd.read_parquet(root / ingest.VIDEOS_KEY)
    victim = videos[videos["status"] == "accepted"].iloc[0]
    raw = root / victim["stored_key"]
    raw.write_bytes(raw.read_bytes()[:1000])
    for scored in root.glob(f"metadata/clips/*/{victim['video_id']}.parquet"):
        scored.unlink()  # so that curate scores it again
    shutil.rmtree(root / "curated")
    proc = cli("curate", "--data-root", str(root), check=False)
    assert proc.returncode != 0
    assert "clips_failure_gate failed" in proc.stderr and victim["video_id"] in proc.stderr
    assert "decode failed" in proc.stderr
    assert not (root / "curated").exists()  # no dataset of error rows
    clips = pd.read_parquet(root / CLIPS_KEY)
    assert (clips["video_id"] == victim["video_id"]).sum() == 1  # the table itself still accounts for the video
