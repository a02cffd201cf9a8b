"""training.evaluation_run.evaluate_base on the session's trained tiny root: each variant's Stage II base model is
scored from its evaluation clips' captions, logged as Stage III's evaluations are (one MLflow run, tags
stage=eval, evaluated_stage=2), reused while the model is unchanged, and never registered.

The root is read-only here (the ``trained`` fixture); MLflow is a fresh store of this test's own, so the
pipeline's own runs, which other tests count, are left alone.
"""

from __future__ import annotations

import math

import mlflow
import pytest

from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.evaluation_run import evaluate_base

from tests.conftest import TRAIN_SETTINGS

# Run alone, this test builds the session's `trained` root (both variants, all stages): its setup counts.
pytestmark = pytest.mark.timeout(1800)
# A short test of the trained models (the figures are not compared here): two sigmas, two videos of two steps.
QUICK = ["evaluation.val_sigmas=[0.5, 2.0]", "evaluation.max_videos=2", "evaluation.sample_steps=2"]


def test_base_models_are_evaluated_logged_and_reused_never_registered(trained, tmp_path):
    _, root, _, _ = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config("tiny", str(root), [*TRAIN_SETTINGS, *QUICK, f"mlflow.tracking_uri={uri}"])
    storage = open_storage(str(root))
    logs: list[str] = []
    out = evaluate_base(storage, "uncurated", cfg, log=logs.append)
    r = out.result
    assert not out.reused and out.decision is None and r.stage == 2 and r.held_out and not logs
    assert math.isfinite(r.metrics["val_loss"]) and r.metrics["se/val_loss"] > 0
    assert set(r.metrics) >= {"val_loss/sigma_0.5", "val_loss/sigma_2"} and r.metrics["n_val_clips"] >= 2
    assert r.n_videos == 2 and len(r.details["captions"]) == 2 and r.details["clip_ids"] == r.details[
        "eval_clip_ids"][:2]

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.get_run(out.run_id)
    t = run.data.tags
    assert (t["stage"], t["evaluated_stage"], t["curation_variant"], t["held_out"]) == ("eval", "2", "uncurated",
                                                                                        "true")
    assert t["eval_set"] == r.eval_set and t["model_hash"] == t["dvc.model"] == out.dvc["model"]
    assert t["dvc.latents"] == out.dvc["latents"] and t["model_run_id"] == out.model_info["run_id"]
    assert run.info.run_name == "eval uncurated stage2"
    samples = {a.path for a in client.list_artifacts(out.run_id, "samples")}
    assert {"samples/text_00.gif", "samples/text_00.mp4"} <= samples
    assert client.search_registered_models() == []  # the registry holds Stage III models only

    again = evaluate_base(storage, "uncurated", cfg, log=logs.append)
    assert again.reused and again.run_id == out.run_id and "already evaluated" in logs[-1]
    assert again.result.metrics["val_loss"] == pytest.approx(r.metrics["val_loss"])
    assert again.result.eval_set == r.eval_set
