"""MLflow: where the tracking store is and how a run is opened, shared by Dagster assets and training processes.

The store is ``config.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file under
``<project home>/.mlflow/`` with artifacts beside it (the embedded default). Every run gets the resolved config
as params (secrets dropped, see ``SvdpipeConfig.flat``) and the tags its caller passes (Dagster run id, asset,
partition).

What a person sees in the MLflow UI is decided here: the experiment is a model-development experiment with a
description and a saved view (variant, stage and headline metric columns) that ``experiment_url`` opens; runs are
named ``<stage> <variant>``; the runs of one Dagster run are children of one parent run named after it.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from svdpipe import project
from svdpipe.config_schema import SvdpipeConfig

MAX_PARAM_LEN = 500  # MLflow's limit on a param value (6000 on newer stores; 500 is safe everywhere)
DESCRIPTION = (
    "svdpipe: curated clip datasets and the latent video diffusion models trained on them (the Stable Video "
    "Diffusion recipe). One parent run per Dagster run; its children are the stages: `ingest <batch>`, "
    "`curate <variant>`, `stage1..3 <variant>` (training), `eval <variant>`, `compare`. Compare `eval` runs of "
    "different `curation_variant`s to see what curation does to the model."
)
VIEW_KEY = "svdpipe"  # the saved runs-table view: experiment tag mlflow.sharedViewState.<key>
# Columns of the saved view: what tells runs apart, then the headline metric of each stage.
VIEW_COLUMNS = [
    *(f"tags.`{t}`" for t in ("stage", "curation_variant", "dataset_version")),
    *(f"metrics.`{m}`" for m in ("loss", "val_loss", "motion_fidelity", "temporal_consistency", "clips_kept")),
    "attributes.`Duration`",
]
# The figures runs are compared by, in that order (a name ending in "_" is a prefix: fd_<extractor>). MLflow keeps
# a run's metrics in the order they were first logged and its Compare view plots the first one the runs share, so
# these are logged first (``log_metrics``): the default plot is a headline figure, not a count.
HEADLINE_METRICS = ("val_loss", "fvd", "fd_", "motion_fidelity", "temporal_consistency", "motion_magnitude", "loss",
                    "clips_kept")
STAGE_NAMES = {"1": "stage1", "2": "stage2", "3": "stage3"}
PARENT_TAG = "svdpipe.pipeline_run"  # on the parent run: the Dagster run id it stands for

_current_pipeline_run: str | None = None


def tracking_uri(cfg: SvdpipeConfig) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project.mlflow_dir() / 'mlflow.db'}"


def ui_url(cfg: SvdpipeConfig) -> str | None:
    """The MLflow UI's web address: ``mlflow.ui_url``, else the tracking URI when it is a server (http/https);
    None for a store without a UI (a SQLite file, a database)."""
    uri = cfg.mlflow.ui_url or tracking_uri(cfg)
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def experiment_path(experiment_id: str) -> str:
    """The runs table of the experiment in the saved view (append to the MLflow UI's address)."""
    return f"/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def run_url(cfg: SvdpipeConfig, run_id: str, experiment_id: str | None = None) -> str | None:
    """The run's page in the MLflow UI, or None where there is no UI (Dagster metadata then shows the run id).
    Without ``experiment_id`` the run is looked up for it."""
    base = ui_url(cfg)
    if base is None or not run_id:
        return None
    if experiment_id is None:
        import mlflow

        experiment_id = mlflow.MlflowClient(tracking_uri(cfg)).get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def headline_rank(metric: str) -> int:
    """The metric's place in ``HEADLINE_METRICS``; ``len(HEADLINE_METRICS)`` for every other metric."""
    return next((i for i, h in enumerate(HEADLINE_METRICS) if metric == h or (h.endswith("_") and metric.startswith(h))),
                len(HEADLINE_METRICS))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """``mlflow.log_metrics`` on the active run, the headline figures first and in their order."""
    import mlflow

    ordered = sorted(metrics, key=headline_rank)  # stable: the rest keep their order
    head = [k for k in ordered if headline_rank(k) < len(HEADLINE_METRICS)]
    for keys in (head, ordered[len(head):]):  # two calls: the headline ones are stored before any other
        if keys:
            mlflow.log_metrics({k: metrics[k] for k in keys}, step=step)


def display_name(tags: dict[str, str], fallback: str) -> str:
    """``<stage> <variant>`` (or ``<stage> <partition>``, or ``<stage>``), the same for every stage; an evaluation
    of a model other than Stage III's (a Stage II base model) adds ``stage<N>``: ``eval svd stage2``."""
    stage = tags.get("stage")
    if not stage:
        return fallback
    subject = tags.get("curation_variant") or tags.get("dagster.partition") or ""
    evaluated = tags.get("evaluated_stage") if stage == "eval" else None
    suffix = f" stage{evaluated}" if evaluated and evaluated != "3" else ""
    return f"{STAGE_NAMES.get(stage, stage)} {subject}".strip() + suffix


def set_pipeline_run(dagster_run_id: str | None) -> None:
    """The Dagster run this process works for: MLflow runs it opens become children of its parent run."""
    global _current_pipeline_run
    _current_pipeline_run = dagster_run_id


def artifact_location(cfg: SvdpipeConfig) -> str | None:
    """Artifacts of a SQLite store live beside its file; a tracking server decides for itself."""
    if cfg.mlflow.artifact_location:
        return cfg.mlflow.artifact_location
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def experiment_tags() -> dict[str, str]:
    """A model-development experiment (not GenAI: no traces tab first), its description and the saved view."""
    # The stage runs themselves, newest first (their pipeline parents only group them: filtered out here).
    view = {"selectedColumns": VIEW_COLUMNS, "orderByKey": "attributes.start_time", "orderByAsc": False,
            "searchFilter": "tags.stage != 'pipeline'"}
    return {"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": DESCRIPTION,
            f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(view)}


def ensure_experiment(cfg: SvdpipeConfig) -> str:
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(cfg.mlflow.experiment)
    if found is None:
        tags = experiment_tags()
        try:
            return client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location(cfg),
                                            tags=tags)
        except mlflow.exceptions.MlflowException:  # another process created it first
            found = client.get_experiment_by_name(cfg.mlflow.experiment)
            if found is None:
                raise
    for key, value in experiment_tags().items():  # an experiment made before these tags existed gets them
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def parent_run_id(cfg: SvdpipeConfig, experiment_id: str, dagster_run_id: str) -> str:
    """The parent MLflow run of a Dagster run, created on first use; named ``pipeline <run id prefix>``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(cfg))
    found = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{dagster_run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {dagster_run_id[:8]}",
                            tags={PARENT_TAG: dagster_run_id, "dagster.run_id": dagster_run_id, "stage": "pipeline",
                                  "profile": cfg.profile, "data_root": cfg.data_root})
    client.set_terminated(run.info.run_id)  # a container: its children carry the work and the status
    return run.info.run_id


@contextmanager
def start_run(
    cfg: SvdpipeConfig, run_name: str, tags: dict[str, str] | None = None, run_id: str | None = None
) -> Iterator:
    """Open an MLflow run with the resolved config as params; yields the active run.

    ``run_id`` continues an existing run (a resumed training stage appends to the run it started, keeping its
    params). A run with
    a ``stage`` tag is named ``<stage> <variant>`` whatever ``run_name`` says; one opened for a Dagster run (tag
    ``dagster.run_id``, or ``set_pipeline_run``) is a child of that run's parent.
    """
    import mlflow

    experiment_id = ensure_experiment(cfg)
    all_tags = {"profile": cfg.profile, "data_root": cfg.data_root, **(tags or {})}
    dagster_run = all_tags.get("dagster.run_id") or _current_pipeline_run
    if dagster_run and run_id is None and "mlflow.parentRunId" not in all_tags:
        all_tags["mlflow.parentRunId"] = parent_run_id(cfg, experiment_id, dagster_run)
        all_tags.setdefault("dagster.run_id", dagster_run)
    name = display_name(all_tags, run_name)
    if run_id is not None:
        all_tags = None  # tags were set when the run started; MLflow refuses new tags on a resumed start
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=all_tags, run_id=run_id) as run:
        params = {k: v[:MAX_PARAM_LEN] for k, v in cfg.flat().items()}
        # A continued run keeps the params it started with: MLflow refuses to change one, and what may differ on a
        # resume (where and on how many processes it runs, how often it checkpoints) does not change its results.
        logged = run.data.params if run_id is not None else {}
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        yield run
