"""MLflow: where the tracking store is and how a run is opened, shared by Dagster assets and training processes.

The store is ``config.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file under
``./.mlflow/`` with artifacts beside it (the embedded default). Every run gets the resolved config as params
(secrets dropped, see ``SvdpipeConfig.flat``) and the tags its caller passes (Dagster run id, asset, partition).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from svdpipe.config import SvdpipeConfig

LOCAL_DIR = Path(".mlflow")
MAX_PARAM_LEN = 500  # MLflow's limit on a param value (6000 on newer stores; 500 is safe everywhere)


def tracking_uri(cfg: SvdpipeConfig) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(LOCAL_DIR / 'mlflow.db').resolve()}"


def artifact_location(cfg: SvdpipeConfig) -> str | None:
    """Artifacts of a SQLite store live beside its file; a tracking server decides for itself."""
    if cfg.mlflow.artifact_location:
        return cfg.mlflow.artifact_location
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def ensure_experiment(cfg: SvdpipeConfig) -> str:
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(cfg.mlflow.experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location(cfg))


@contextmanager
def start_run(
    cfg: SvdpipeConfig, run_name: str, tags: dict[str, str] | None = None, run_id: str | None = None
) -> Iterator:
    """Open an MLflow run with the resolved config as params; yields the active run.

    ``run_id`` continues an existing run (a resumed training stage appends to the run it started).
    """
    import mlflow

    experiment_id = ensure_experiment(cfg)
    all_tags = {"profile": cfg.profile, "data_root": cfg.data_root, **(tags or {})}
    if run_id is not None:
        all_tags = None  # tags were set when the run started; MLflow refuses new tags on a resumed start
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags, run_id=run_id) as run:
        mlflow.log_params({k: v[:MAX_PARAM_LEN] for k, v in cfg.flat().items()})
        yield run
