"""Declarative automation and the retraining schedule, evaluated against a real Dagster instance."""

import shutil
from datetime import datetime

import dagster as dg

from assets.ingestion import ingested_batch, videos
from orchestration.definitions import defs
from assets.resources import MlflowResource, SvdpipeResource
from orchestration.schedules import retrain_finetune, retrain_schedule
from orchestration.sensors import new_videos_sensor
from svdpipe.config import load_config


def test_a_new_ingested_batch_flows_into_curation_but_not_into_training(corpus, tmp_path):
    folder, truth = corpus
    src = tmp_path / "src"
    src.mkdir()
    name = sorted(truth["videos"])[0]
    shutil.copy(folder / name, src / name)
    res = SvdpipeResource(profile="tiny", data_root=str(tmp_path / "root"),
                          overrides=[f"ingest.watch={src}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
    resources = {"svdpipe": res, "mlflow": MlflowResource(svdpipe=res)}
    with dg.instance_for_test() as instance:
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as ctx:
            batch = new_videos_sensor(ctx).run_requests[0].partition_key
        instance.add_dynamic_partitions("ingest_batch", [batch])  # what the daemon does with the request
        assert dg.materialize([ingested_batch], partition_key=batch, resources=resources, instance=instance).success
        assert dg.materialize([videos], resources=resources, instance=instance).success
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
        assert set(after.get_requested_partitions(dg.AssetKey("clip_scores"))) == {batch}
        # Training and evaluation are explicit (CLI, UI, job) or scheduled, never started by new data alone.
        for key in ("clip_latents", "image_model", "video_model", "finetuned_model", "evaluation"):
            assert after.get_num_requested(dg.AssetKey(key)) == 0


def test_retrain_schedule_runs_stage3_of_the_configured_variant_on_its_cron():
    cfg = load_config().schedule
    assert retrain_schedule.cron_schedule == cfg.retrain_cron
    assert retrain_schedule.job_name == retrain_finetune.name
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 29, 3, 0),
                                        repository_def=defs.get_repository_def())
    request = retrain_schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == cfg.retrain_variant
    assert request.run_key == f"retrain-{cfg.retrain_variant}-20261129T0300"
    selected = {k.to_user_string() for k in defs.resolve_job_def("retrain_finetune").asset_layer.executable_asset_keys}
    assert {"finetuned_model", "evaluation", "clip_latents", "curated_dataset"} <= selected
    assert "image_model" not in selected and "video_model" not in selected
    assert defs.resolve_job_def("retrain_finetune").tags["svdpipe/stage"] == "train"
