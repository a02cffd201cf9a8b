"""Declarative automation and the retraining schedule, evaluated against a real Dagster instance."""

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from assets.ingestion import ingested_batch, videos
from orchestration.definitions import defs
from orchestration.schedules import retrain_finetune, retrain_schedule
from orchestration.sensors import new_videos_sensor
from svdpipe.config import load_config


def test_a_new_ingested_batch_flows_into_curation_but_not_into_training(watched_resources):
    resources = watched_resources()
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
        for key in ("clip_latents", "image_model", "video_model", "finetuned_model", "evaluation", "base_evaluation"):
            assert after.get_num_requested(dg.AssetKey(key)) == 0


def test_the_comparison_follows_new_stage_iii_evaluations_without_waiting_for_base_model_ones():
    """Stage II base evaluations are optional: every variant's Stage III evaluation is enough for the eager
    comparison (it would wait forever on a never-materialized base_evaluation otherwise), and a new base
    evaluation brings it up to date too."""
    compare = dg.AssetKey("variant_comparison")
    selection = dg.AssetSelection.assets(compare)
    with dg.instance_for_test() as instance:
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        for asset in ("evaluation", "base_evaluation"):
            for variant in sorted(load_config().variants)[:-1]:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=variant))
            tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                     cursor=tick.cursor)
            assert tick.get_num_requested(compare) == 0, asset  # a variant's Stage III evaluation is missing
        last = sorted(load_config().variants)[-1]
        instance.report_runless_asset_event(dg.AssetMaterialization("evaluation", partition=last))
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                 cursor=tick.cursor)
        assert tick.get_num_requested(compare) == 1  # base_evaluation[last] was never materialized


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


@pytest.mark.slow
def test_the_readme_walkthrough_drop_videos_into_the_watched_folder_and_the_chain_runs(cli, tmp_path):
    """README, Automation: set ``ingest.watch``, drop files in; both sensors run by default and the daemon's
    ticks carry the new batch through ingestion, scoring and curation into every variant, and no further."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cli.env["SVDPIPE_HOME"] = str(tmp_path / "project")
    for name in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI"):  # the project's own stores, as `make ui` uses them
        cli.env.pop(name)
    cli("settings", "--set", f"ingest.watch={incoming}")
    cli("sample-corpus", str(incoming), "--videos", "2", "--seconds", "6", "--no-broken")

    ticks = subprocess.run([sys.executable, str(Path(__file__).parent / "daemon_ticks.py")], env=cli.env,
                           cwd=cli.cwd, capture_output=True, text=True, timeout=1500)
    assert ticks.returncode == 0, ticks.stderr[-4000:]
    summary = json.loads(ticks.stdout.strip().splitlines()[-1])
    assert summary["default_status"] == {"new_videos_sensor": "RUNNING",
                                         "default_automation_condition_sensor": "RUNNING"}
    runs = summary["runs"]
    assert summary["settled"], runs
    assert all(r["success"] for r in runs), runs
    (ingest,) = [r for r in runs if r["assets"] == ["ingested_batch"]]
    assert ingest["sensor"] == "new_videos_sensor" and ingest["tick"] == 0
    batch = ingest["partition"]
    automated = [r for r in runs if r["sensor"] == "default_automation_condition_sensor"]
    assert len(automated) == len(runs) - 1, runs
    variants = sorted(load_config("tiny").variants)
    steps = [(r["tick"], r["assets"][0], r["partition"]) for r in automated]
    # The batch's scores and the videos table (both read the batch), then the clips table with its checks, then
    # every variant's curated dataset once the blocking checks passed.
    assert {s[1:] for s in steps[:2]} == {("videos", None), ("clip_scores", batch)} and steps[0][0] >= 1, runs
    assert steps[2][1:] == ("clips", None), runs
    assert {s[1:] for s in steps[3:]} == {("curated_dataset", v) for v in variants}, runs
    assert len(steps) == 3 + len(variants) and all(s[0] > steps[2][0] for s in steps[3:]), runs
    clip_checks = automated[2]["checks"]
    assert clip_checks and all(clip_checks.values()), clip_checks

    # What the runs wrote: the batch's two videos accepted, every variant's curated dataset in the data root.
    root = tmp_path / "project" / "data"
    table = pd.read_parquet(root / "metadata" / "videos.parquet")
    assert (table["status"] == "accepted").sum() == 2
    for v in variants:
        assert (root / "curated" / v).is_dir()
