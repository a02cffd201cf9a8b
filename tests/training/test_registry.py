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

from svdpipe.config import EvaluationConfig, MlflowConfig, SvdpipeConfig
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

    first = register_if_not_worse(cfg, uri, NAME, {"val_loss": 1.0, "fd_clip": 3.0})
    assert first.registered and first.version == "1" and first.current_value is None
    assert "first version" in first.rule

    better = register_if_not_worse(cfg, uri, NAME, {"val_loss": 0.8})
    assert better.registered and better.version == "2"
    assert (better.candidate_value, better.current_value, better.current_version) == (0.8, 1.0, "1")

    equal = register_if_not_worse(cfg, run_id, NAME, {"val_loss": 0.8})  # a bare run id works too
    assert equal.registered and equal.version == "3" and equal.current_value == 0.8

    again = register_if_not_worse(cfg, run_id, NAME, {"val_loss": 0.8})  # the same evaluation rerun
    assert not again.registered and "already is version 3" in again.rule

    worse = register_if_not_worse(cfg, uri, NAME, {"val_loss": 0.9})
    assert not worse.registered and worse.version is None
    assert (worse.candidate_value, worse.current_value, worse.current_version) == (0.9, 0.8, "3")
    assert "refused" in worse.rule and "0.9 > 0.8" in worse.rule

    nan = register_if_not_worse(cfg, uri, NAME, {"val_loss": float("nan")})
    assert not nan.registered and "NaN" in nan.rule

    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert sorted(versions) == ["1", "2", "3"]
    assert versions["1"].tags["metric.fd_clip"] == "3.0" and versions["2"].tags["register_value"] == "0.8"
    assert versions["2"].tags["previous_version"] == "1" and versions["1"].run_id == run_id
    assert client.get_run(run_id).data.tags["registry.decision"] == "refused"


def test_higher_is_better_and_missing_metric(store):
    cfg, uri, _ = store
    a = register_if_not_worse(cfg, uri, "tc-model", {"temporal_consistency": 0.5}, metric="temporal_consistency",
                              lower_is_better=False)
    b = register_if_not_worse(cfg, uri, "tc-model", {"temporal_consistency": 0.4}, metric="temporal_consistency",
                              lower_is_better=False)
    c = register_if_not_worse(cfg, uri, "tc-model", {"temporal_consistency": 0.6}, metric="temporal_consistency",
                              lower_is_better=False)
    assert (a.registered, b.registered, c.registered) == (True, False, True) and c.version == "2"
    with pytest.raises(KeyError, match="val_loss"):
        register_if_not_worse(cfg, uri, NAME, {"fvd": 1.0})


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
