"""MLflow as a person meets it: a model-development experiment with a description and a saved view, runs named
`<stage> <variant>`, the runs of one Dagster run under one parent, links only where there is a server."""

import json

import mlflow

from svdpipe import tracking
from svdpipe.config import load_config


def test_runs_are_named_by_stage_and_nest_under_their_dagster_run(tmp_path):
    cfg = load_config("tiny", str(tmp_path / "root"), [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"], environ={})
    for stage, variant, given in (("1", "svd", "train stage1 svd"), ("eval", "svd", "eval-svd-stage3")):
        with tracking.start_run(cfg, given, {"stage": stage, "curation_variant": variant, "dagster.run_id": "r-1"}):
            pass
    tracking.set_pipeline_run("r-2")  # what the Dagster resource does for assets that pass no Dagster tags
    try:
        with tracking.start_run(cfg, "compare-variants", {"stage": "compare"}):
            pass
    finally:
        tracking.set_pipeline_run(None)

    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "curation_variant" in experiment.tags["mlflow.note.content"]
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])
    assert {"tags.`stage`", "tags.`curation_variant`", "metrics.`val_loss`"} <= set(view["selectedColumns"])

    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"stage1 svd", "eval svd", "compare", "pipeline r-1", "pipeline r-2"} == set(runs)
    assert runs["stage1 svd"].data.tags["mlflow.parentRunId"] == runs["pipeline r-1"].info.run_id
    assert runs["eval svd"].data.tags["mlflow.parentRunId"] == runs["pipeline r-1"].info.run_id
    assert runs["compare"].data.tags["mlflow.parentRunId"] == runs["pipeline r-2"].info.run_id
    assert runs["compare"].data.tags["dagster.run_id"] == "r-2"

    assert tracking.run_url(cfg, "abc", "1") is None  # a SQLite store has no web address


def test_a_run_url_points_at_the_tracking_server_or_the_configured_ui(tmp_path):
    sqlite = f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"
    cfg = load_config("tiny", str(tmp_path / "root"), [sqlite], environ={})
    served = load_config("tiny", str(tmp_path / "root"), ["mlflow.tracking_uri=https://mlf:5000/"], environ={})
    assert tracking.run_url(served, "abc", "1") == "https://mlf:5000/#/experiments/1/runs/abc"
    # A server reached inside a cluster by one name and from a browser by another: the UI's address wins.
    inside = load_config("tiny", str(tmp_path / "root"), ["mlflow.tracking_uri=http://mlflow.svc:5000",
                                                          "mlflow.ui_url=https://mlflow.example.org/"], environ={})
    assert tracking.run_url(inside, "abc", "7") == "https://mlflow.example.org/#/experiments/7/runs/abc"
    # Without the experiment the run is looked up for it.
    with_ui = load_config("tiny", str(tmp_path / "root"), [sqlite, "mlflow.ui_url=http://ui:5000"], environ={})
    with tracking.start_run(with_ui, "x", {"stage": "compare"}) as run:
        pass
    assert tracking.run_url(with_ui, run.info.run_id) == (
        f"http://ui:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    assert tracking.run_url(cfg, run.info.run_id) is None


def test_headline_metrics_are_stored_first_so_that_mlflow_compare_plots_one_by_default(tmp_path):
    cfg = load_config("tiny", str(tmp_path / "root"), [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"], environ={})
    metrics = {"n_val_clips": 4.0, "se/val_loss": 0.1, "temporal_consistency": 0.9, "fd_tiny": 3.0, "val_loss": 0.5,
               "n_videos": 2.0}
    with tracking.start_run(cfg, "eval", {"stage": "eval", "curation_variant": "svd"}) as run:
        tracking.log_metrics(metrics)
    stored = list(mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(run.info.run_id).data.metrics)
    assert stored == ["val_loss", "fd_tiny", "temporal_consistency", "n_val_clips", "se/val_loss", "n_videos"]


def test_a_continued_run_keeps_its_params_when_launch_settings_change(tmp_path):
    """A stage resumed on other nodes (a new rendezvous endpoint, more processes) continues its run."""
    base = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", "training.nnodes=2"]
    first = load_config("tiny", str(tmp_path / "root"), [*base, "training.rdzv_endpoint=a:1"], environ={})
    again = load_config("tiny", str(tmp_path / "root"), [*base, "training.rdzv_endpoint=b:2", "training.nproc=2"],
                        environ={})
    with tracking.start_run(first, "train stage1 svd", {"stage": "1"}) as run:
        run_id = run.info.run_id
    with tracking.start_run(again, "train stage1 svd", run_id=run_id) as run:
        assert run.info.run_id == run_id
    params = mlflow.MlflowClient(first.mlflow.tracking_uri).get_run(run_id).data.params
    assert params["training.rdzv_endpoint"] == "a:1" and params["training.nproc"] == "1"
