"""training.registry on a real local MLflow store: the tiny stage-3 pipeline logged as a pyfunc model, the
registration rule (first / better / equal register, worse and NaN refused, figures recorded), and prediction."""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from svdpipe.config_schema import EvaluationConfig, MlflowConfig, SvdpipeConfig
from svdpipe.tracking import start_run
from training.encoders import build_feature_extractor, build_image_encoder, build_vae
from training.export import export_svd_pipeline
from training.models import build_video_unet
from training.registry import log_pipeline_model, register_if_not_worse

NAME = "svd-tiny"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    cfg = SvdpipeConfig(mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="reg"),
                        evaluation=EvaluationConfig(register_metric="val_loss"))
    torch.manual_seed(0)
    pipe_dir = export_svd_pipeline(build_video_unet("tiny"), build_vae("tiny"), build_image_encoder("tiny"),
                                   build_feature_extractor(), tmp / "pipe")
    with start_run(cfg, "train-stage3", {"stage": "train3"}) as run:
        uri = log_pipeline_model(pipe_dir)
    return cfg, uri, run.info.run_id


def test_rule_first_better_equal_register_worse_refused(store):
    cfg, uri, run_id = store
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)

    first = register_if_not_worse(cfg, uri, NAME, {"val_loss": 1.0, "fd_clip": 3.0}, eval_set="E1")
    assert first.registered and first.version == "1" and first.current_value is None
    assert "first version" in first.rule

    better = register_if_not_worse(cfg, uri, NAME, {"val_loss": 0.8, "se/val_loss": 0.05, "n/val_loss": 4},
                                   eval_set="E1")
    assert better.registered and better.version == "2"
    assert (better.candidate_value, better.current_value, better.current_version) == (0.8, 1.0, "1")

    equal = register_if_not_worse(cfg, run_id, NAME, {"val_loss": 0.8}, eval_set="E1")  # a bare run id works too
    assert equal.registered and equal.version == "3" and equal.current_value == 0.8

    again = register_if_not_worse(cfg, run_id, NAME, {"val_loss": 0.8}, eval_set="E1")  # the same evaluation rerun
    assert not again.registered and "already is version 3" in again.rule

    worse = register_if_not_worse(cfg, uri, NAME, {"val_loss": 0.9}, eval_set="E1")
    assert not worse.registered and worse.version is None
    assert (worse.candidate_value, worse.current_value, worse.current_version) == (0.9, 0.8, "3")
    assert "refused" in worse.rule and "0.9 > 0.8" in worse.rule

    nan = register_if_not_worse(cfg, uri, NAME, {"val_loss": float("nan")}, eval_set="E1")
    assert not nan.registered and "NaN" in nan.rule

    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert sorted(versions) == ["1", "2", "3"]
    assert versions["1"].tags["metric.fd_clip"] == "3.0" and versions["2"].tags["register_value"] == "0.8"
    assert versions["2"].tags["previous_version"] == "1" and versions["1"].run_id == run_id
    assert versions["2"].tags["eval_set"] == "E1" and "val_loss 0.8 ± 0.05 (n=4)" in versions["2"].description
    assert client.get_run(run_id).data.tags["registry.decision"] == "refused"
    # The champion alias follows the rule: the last registered version, not moved by refusals.
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    model = client.get_registered_model(NAME)
    assert "champion" in model.description and "val_loss (lower is better)" in model.description


def test_champion_not_newest_is_the_reference_and_other_eval_sets_do_not_compare(store):
    cfg, uri, _ = store
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)
    register_if_not_worse(cfg, uri, "champ", {"val_loss": 0.5}, eval_set="E1")
    client.set_registered_model_alias("champ", "champion", "1")
    mlflow.register_model(uri, "champ", tags={"metric.val_loss": "9.0", "eval_set": "E1"})  # by hand, not champion
    d = register_if_not_worse(cfg, uri, "champ", {"val_loss": 0.7}, eval_set="E1")
    assert not d.registered and d.current_version == "1" and d.current_value == 0.5
    other = register_if_not_worse(cfg, uri, "champ", {"val_loss": 0.7}, eval_set="E2")
    assert other.registered and "another evaluation set" in other.rule
    assert str(client.get_model_version_by_alias("champ", "champion").version) == other.version


def test_directions_come_from_the_metric_table(store):
    cfg, uri, _ = store
    # motion_fidelity is higher-is-better: the old rule (lower always better) registered the worse model here.
    a = register_if_not_worse(cfg, uri, "mf-model", {"motion_fidelity": 0.5}, metric="motion_fidelity")
    b = register_if_not_worse(cfg, uri, "mf-model", {"motion_fidelity": 0.2}, metric="motion_fidelity")
    c = register_if_not_worse(cfg, uri, "mf-model", {"motion_fidelity": 0.9}, metric="motion_fidelity")
    assert (a.registered, b.registered, c.registered) == (True, False, True) and c.version == "2"
    cfg_mf = cfg.model_copy(update={"evaluation": EvaluationConfig(register_metric="motion_fidelity")})
    assert not register_if_not_worse(cfg_mf, uri, "mf-model", {"motion_fidelity": 0.1}).registered
    with pytest.raises(KeyError, match="val_loss"):
        register_if_not_worse(cfg, uri, NAME, {"fvd": 1.0})
    with pytest.raises(ValueError, match="no better direction"):
        register_if_not_worse(cfg, uri, NAME, {"n_videos": 4.0}, metric="n_videos")


def test_static_samples_and_training_clips_never_register(store):
    cfg, uri, _ = store
    moving = {"temporal_consistency": 0.90, "motion_magnitude": 1.0, "motion_magnitude_real": 1.2}
    frozen = {"temporal_consistency": 1.00, "motion_magnitude": 0.0, "motion_magnitude_real": 1.2}
    assert register_if_not_worse(cfg, uri, "tc-model", moving, metric="temporal_consistency").registered
    d = register_if_not_worse(cfg, uri, "tc-model", frozen, metric="temporal_consistency")
    assert not d.registered and "static samples" in d.rule
    alone = register_if_not_worse(cfg, uri, "tc-model", {"temporal_consistency": 1.0}, metric="temporal_consistency")
    assert not alone.registered and "needs motion_magnitude" in alone.rule
    own = register_if_not_worse(cfg, uri, "own-clips", {"val_loss": 0.1}, held_out=False)
    assert not own.registered and "trained on" in own.rule


def test_pyfunc_generates_frames(store):
    _, uri, _ = store
    model = mlflow.pyfunc.load_model(uri)
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="PNG")
    df = pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()], "num_frames": [3], "height": [32],
                       "width": [32], "num_inference_steps": [2], "seed": [1]})
    out = model.predict(df)
    again = model.predict(df)
    assert len(out) == 1 and out[0].shape == (3, 32, 32, 3) and out[0].dtype == np.uint8
    np.testing.assert_array_equal(out[0], again[0])
