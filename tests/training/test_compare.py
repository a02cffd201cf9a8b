"""training.compare on a real local MLflow store holding evaluation runs logged by training.evaluate."""

from __future__ import annotations

import time

import mlflow
import pytest

from svdpipe.config import MlflowConfig, SvdpipeConfig
from svdpipe.tracking import start_run
from training.compare import better_direction, compare_variants, log_comparison
from training.evaluate import EvalResult, log_evaluation


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> SvdpipeConfig:
    tmp = tmp_path_factory.mktemp("compare")
    return SvdpipeConfig(mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="cmp"))


def _log(cfg, variant: str, val_loss: float, dv: str, fd: float = 1.0) -> str:
    metrics = {"val_loss": val_loss, "val_loss/sigma_1": val_loss * 2, "fd_clip-tiny": fd,
               "motion_fidelity": 0.5, "temporal_consistency": 0.9, "n_videos": 4.0}
    result = EvalResult(variant, 3, metrics, [], 4, details={"feature_extractor": "clip-tiny"})
    run_id = log_evaluation(result, cfg, variant, dv, f"model-{variant}")
    time.sleep(0.01)  # distinct start times
    return run_id


@pytest.fixture(scope="module")
def runs(cfg) -> dict[str, str]:
    ids = {
        "svd_old": _log(cfg, "svd", 0.9, "dv1"),
        "uncurated": _log(cfg, "uncurated", 0.8, "dv-u", fd=float("nan")),
        "svd_new": _log(cfg, "svd", 0.5, "dv2"),
    }
    with start_run(cfg, "train", {"stage": "train3", "curation_variant": "svd"}):
        mlflow.log_metric("val_loss", 0.01)  # not an evaluation run: ignored
    return ids


def test_newest_eval_run_per_variant(cfg, runs, tmp_path):
    c = compare_variants(cfg, out_dir=tmp_path)
    t = c.table.set_index("variant")
    assert list(t.index) == ["svd", "uncurated"]
    assert t.loc["svd", "run_id"] == runs["svd_new"] and t.loc["svd", "dataset_version"] == "dv2"
    assert t.loc["svd", "val_loss"] == pytest.approx(0.5) and t.loc["uncurated", "val_loss"] == pytest.approx(0.8)
    assert t.loc["svd", "model_run_id"] == "model-svd" and t.loc["svd", "evaluated_stage"] == "3"
    assert c.metrics[0] == "val_loss" and c.metrics[-1] == "n_videos" and "val_loss/sigma_1" in c.metrics
    assert "| svd" in c.markdown and "val_loss (↓)" in c.markdown and "motion_fidelity (↑)" in c.markdown
    assert c.png.exists() and c.png.read_bytes()[:4] == b"\x89PNG"


def test_log_comparison_run(cfg, runs, tmp_path):
    c = compare_variants(cfg, out_dir=tmp_path)
    run_id = log_comparison(c, cfg)
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["stage"] == "compare" and run.data.tags["variants"] == "svd,uncurated"
    assert {a.path for a in client.list_artifacts(run_id)} == {"comparison.csv", "comparison.md", "comparison.png"}
    csv = mlflow.artifacts.load_text(f"runs:/{run_id}/comparison.csv")
    assert runs["svd_new"] in csv and runs["svd_old"] not in csv
    # The comparison run itself is not an evaluation run: comparing again gives the same table.
    assert compare_variants(cfg, out_dir=tmp_path).table["run_id"].tolist() == c.table["run_id"].tolist()


def test_empty_experiment(cfg, tmp_path):
    c = compare_variants(cfg, experiment="nothing-here", out_dir=tmp_path)
    assert c.table.empty and c.png is None and "no stage=eval runs" in c.notes[0]


def test_better_direction():
    assert better_direction("fvd") == better_direction("val_loss/sigma_0.02") == "lower"
    assert better_direction("temporal_consistency") == "higher" and better_direction("n_videos") is None
