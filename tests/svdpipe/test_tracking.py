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

    assert tracking.run_url(cfg, "1", "abc") is None  # a SQLite store has no web address
    served = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": "http://mlf:5000/"})})
    assert tracking.run_url(served, "1", "abc") == "http://mlf:5000/#/experiments/1/runs/abc"


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
