"""`svdpipe train` then `svdpipe evaluate` end to end on a curated sample corpus (tiny profile, CPU).

Stages 1 -> 2 -> 3 per variant, each a Dagster materialization launching the stage process through Pipes;
the exported Stage III folder must load in diffusers' StableVideoDiffusionPipeline and generate frames.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from svdpipe.storage import open_storage

from tests.conftest import TRAIN_STEPS as STEPS, train_args

# The first test here may build the session's `trained` root (both variants, all stages): its setup counts.
pytestmark = pytest.mark.timeout(1800)


def _client(cli):
    uri = cli.env["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri, registry_uri=uri)  # not the process-wide registry another test set
    return client, client.get_experiment_by_name("svdpipe").experiment_id


def test_each_stage_is_one_mlflow_run_whose_loss_falls(trained):
    cli, root, train, _ = trained
    client, exp = _client(cli)
    storage = open_storage(str(root))
    for variant in ("uncurated", "svd"):
        version = json.loads(storage.read_text(f"curated/{variant}/selection.json"))["clip_ids_sha1"]
        for stage in (1, 2, 3):
            (run,) = client.search_runs(exp, f"tags.stage = '{stage}' and tags.curation_variant = '{variant}'")
            assert run.data.tags["dataset_version"] == version
            assert run.data.params["training.stages.1.steps"] == str(STEPS)  # the resolved config is in params
            losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
            assert len(losses) == STEPS
            assert np.isfinite(losses).all()
            # Stages I and II learn from random or freshly inflated weights, visibly within the test's steps. Stage
            # III finetunes at under a third of their learning rate and under far wider noise levels (P_std 1.6): over so
            # few steps its loss moves less than its per-step noise, so a falling mean would be chance there.
            if stage < 3:
                assert np.mean(losses[-4:]) < np.mean(losses[:4]), (variant, stage, losses)
            metrics = run.data.metrics
            assert metrics["samples_per_s"] > 0 and metrics["peak_memory_mb"] > 0
            assert any(k.startswith("loss_sigma_") for k in metrics)
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"config.json", "loss_curve.png", "model_info.json", "samples"} <= artifacts
            samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
            assert any(p.endswith(".mp4") for p in samples) if stage > 1 else samples == {"samples/samples.png"}
            info = json.loads(storage.read_text(f"models/{variant}/stage{stage}/svdpipe_model.json"))
            assert info["run_id"] == run.info.run_id
        assert f"{variant:>12} stage 3: final loss" in train.stdout


def test_stage3_folder_generates_frames_in_stable_video_diffusion_pipeline(trained):
    from diffusers import StableVideoDiffusionPipeline

    _, root, _, _ = trained
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(root / "models/svd/stage3"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    frames = pipe(image, height=96, width=96, num_frames=4, num_inference_steps=2, decode_chunk_size=4,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert frames.shape == (1, 4, 96, 96, 3) and np.isfinite(frames).all()


def test_rerun_is_up_to_date(trained):
    cli, root, _, _ = trained
    out = cli("train", "--data-root", str(root), "--variant", "svd", *train_args()).stdout
    assert out.count("(up to date, not retrained)") == 3


def test_evaluation_comparison_and_registration(trained, tmp_path):
    from svdpipe.config import load_config
    from training.latents import load_latents

    cli, root, _, evaluate = trained
    client, exp = _client(cli)
    stage = load_config("tiny", str(root)).training.stages["3"]
    eval_sets, clips = set(), []
    for variant in ("uncurated", "svd"):
        (run,) = client.search_runs(exp, f"tags.stage = 'eval' and tags.curation_variant = '{variant}'")
        assert np.isfinite(run.data.metrics["val_loss"]) and "temporal_consistency" in run.data.metrics
        assert np.isfinite(run.data.metrics["motion_fidelity"])  # a number, measured at the generated rate
        # A variant whose every clip is an evaluation clip (svd keeps 1 clip of this small corpus) has trained on
        # them (training.run's fallback): its evaluation is not held out and its model is never registered.
        trains = len(load_latents(open_storage(str(root)), variant, stage).split(val=False)) > 0
        assert run.data.tags["held_out"] == str(trains).lower(), variant
        eval_sets.add(run.data.tags["eval_set"])
        saved = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))).read_text())
        clips.append(saved["details"]["eval_clip_ids"])
        assert any(a.path == "samples" for a in client.list_artifacts(run.info.run_id))
        versions = client.search_model_versions(f"name = 'svdpipe-{variant}'")
        assert len(versions) == int(trains)  # the first evaluated model is registered, and is the champion
        if trains:
            assert str(client.get_model_version_by_alias(f"svdpipe-{variant}", "champion").version) == "1"
    # One evaluation set for both variants: the same clips, seeds and sigmas, in MLflow and in the comparison.
    assert len(eval_sets) == 1 and clips[0] == clips[1] and len(clips[0]) >= 2, (eval_sets, clips)
    (compare,) = client.search_runs(exp, "tags.stage = 'compare'")
    assert compare.data.tags["eval_set"] in eval_sets
    assert {a.path for a in client.list_artifacts(compare.info.run_id)} >= {"comparison.png", "comparison.md"}
    assert "| uncurated" in evaluate.stdout and "| svd" in evaluate.stdout
    assert f"evaluation set {eval_sets.pop()}" in evaluate.stdout


def test_evaluate_stage_2_scores_the_base_models_and_compares_them(trained, cli):
    """`svdpipe evaluate --stage 2` on the trained root, with Dagster and MLflow stores of its own (the trained
    root's own runs stay as the tests above count them)."""
    _, root, _, _ = trained
    quick = ["evaluation.val_sigmas=[0.5, 2.0]", "evaluation.max_videos=1", "evaluation.sample_steps=2"]
    out = cli("evaluate", "--stage", "2", "--data-root", str(root), *train_args(),
              *(a for q in quick for a in ("--set", q))).stdout
    client, exp = _client(cli)
    runs = client.search_runs(exp, "tags.stage = 'eval'")
    assert sorted((r.data.tags["curation_variant"], r.data.tags["evaluated_stage"]) for r in runs) == [
        ("svd", "2"), ("uncurated", "2")]
    assert len({r.data.tags["eval_set"] for r in runs}) == 1  # one test of both variants' base models
    assert "registered" not in out and all(f"{v:>12}: val_loss" in out for v in ("svd", "uncurated"))
    # The comparison has the base models' section, on their evaluation set; no Stage III evaluation ran here.
    assert "### Stage II base models" in out and "### Stage III" not in out
    assert f"evaluation set {runs[0].data.tags['eval_set']}" in out
    (compare,) = client.search_runs(exp, "tags.stage = 'compare'")
    assert compare.data.tags["stage2.eval_set"] == runs[0].data.tags["eval_set"]
    assert "comparison_stage2.png" in {a.path for a in client.list_artifacts(compare.info.run_id)}
