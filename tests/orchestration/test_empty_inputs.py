"""Empty or missing input fails an asset loudly, naming the data root, and leaves no materialization behind."""

import dagster as dg
import pytest

from assets.curation import curated_dataset
from assets.evaluation import evaluation
from assets.resources import MlflowResource, SvdpipeResource
from assets.training import clip_latents, finetuned_model
from curation import ingest
from curation.clips_table import CLIPS_KEY, clip_id, to_frame
from svdpipe.storage import open_storage


def _resources(tmp_path, *overrides: str) -> dict:
    res = SvdpipeResource(profile="tiny", data_root=str(tmp_path / "root"),
                          overrides=[f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", *overrides])
    return {"svdpipe": res, "mlflow": MlflowResource(svdpipe=res),
            "pipes_subprocess_client": dg.PipesSubprocessClient()}


def _clip(i: int, duration: float) -> dict:
    return {"clip_id": clip_id("v0", i * 100, i * 100 + int(duration * 24)), "video_id": "v0",
            "start_frame": i * 100, "end_frame": i * 100 + int(duration * 24), "start_s": i * 4.0,
            "end_s": i * 4.0 + duration, "duration_s": duration, "fps": 24.0, "width": 64, "height": 64,
            "motion_score": 1.0 + i, "text_area_ratio": 0.0, "aesthetic_score": 5.0, "clip_text_similarity": 0.3,
            "caption": "a clip", "num_frames": int(duration * 24), "cut_in": "hard", "motion_series": [1.0],
            "text_area_per_frame": [0.0, 0.0, 0.0], "score_frames": [0, 1, 2], "caption_model": "tiny-coca",
            "clip_model": "tiny-clip", "scoring_version": "test", "error": "", "batch": "b0"}


def _fails(asset, resources, partition: str, *expected: str) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=partition, resources=resources, instance=instance,
                                raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.message
        for text in expected:
            assert text in message, message
        # No materialization: the partition's latest is not an empty "success".
        assert instance.get_latest_materialization_event(asset.key) is None


@pytest.mark.parametrize("table", ["missing", "empty"])
def test_a_missing_or_empty_clips_table_fails_curated_dataset(table, tmp_path):
    resources = _resources(tmp_path)
    root = open_storage(str(tmp_path / "root"))
    if table == "empty":
        ingest.write_table(root, CLIPS_KEY, to_frame([]))
    expected = "no clips table" if table == "missing" else "has 0 clips"
    _fails(curated_dataset, resources, "svd", expected, str(tmp_path / "root"))
    assert not root.exists("curated/svd/selection.json")  # nothing written either


def test_a_variant_keeping_no_clip_fails_unless_it_allows_it(tmp_path):
    root = open_storage(str(tmp_path / "root"))
    ingest.write_table(root, CLIPS_KEY, to_frame([_clip(0, 0.5), _clip(1, 0.6)]))  # all shorter than 1 s
    _fails(curated_dataset, _resources(tmp_path), "uncurated", "keeps 0 of 2 clips", "allow_empty")
    assert not root.exists("curated/uncurated/selection.json")

    from assets import guards
    from svdpipe.config import load_config

    allowed = load_config("tiny", str(tmp_path / "root"), ["variants.uncurated.allow_empty=true"], environ={})
    assert guards.clips_to_select(root, "uncurated", allowed) == 0


def test_training_and_evaluation_fail_on_missing_inputs_naming_the_data_root(tmp_path):
    resources = _resources(tmp_path)
    root = str(tmp_path / "root")
    _fails(clip_latents, resources, "svd", "no curated dataset 'svd'", root, "svdpipe curate --variant svd")
    _fails(finetuned_model, resources, "svd", "no clip latents for 'svd'", root)
    _fails(evaluation, resources, "svd", "no Stage III model for 'svd'", root, "finetuned_model[svd]")
