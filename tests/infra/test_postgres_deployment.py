"""The Postgres deployment: Dagster instance and MLflow tracking server on PostgreSQL, MLflow artifacts in S3.

A real `svdpipe ingest` runs against fresh databases in the machine's PostgreSQL, an MLflow server started from
infra.deploy, and a fresh SeaweedFS bucket; the run, its events, the MLflow run and its artifacts are then
looked up where they must have landed.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import dagster as dg
import mlflow
import pytest
import yaml

from infra import deploy


@pytest.fixture(scope="module")
def deployment(postgres, pg_databases, s3, tmp_path_factory):
    """Fresh Dagster and MLflow databases, an MLflow server on them with artifacts in a fresh bucket."""
    work = tmp_path_factory.mktemp("deployment")
    dagster_db, mlflow_db = pg_databases("dagster"), pg_databases("mlflow")
    bucket = f"mlflow-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    server = deploy.start_mlflow_server(postgres.url(mlflow_db), f"s3://{bucket}/artifacts", work / "mlflow",
                                        env=s3.env)
    home = deploy.write_dagster_home(work / "dagster_home")
    try:
        yield SimpleNamespace(pg=postgres, dagster_db=dagster_db, mlflow_db=mlflow_db, bucket=bucket, server=server,
                              home=home, env={**postgres.dagster_env(dagster_db), "DAGSTER_HOME": str(home)})
    finally:
        server.stop()


def _instance(deployment, monkeypatch, db: str | None = None) -> dg.DagsterInstance:
    for k, v in deployment.pg.dagster_env(db or deployment.dagster_db).items():
        monkeypatch.setenv(k, v)
    return dg.DagsterInstance.from_config(str(deployment.home))


def _query(pg: deploy.Postgres, db: str, sql: str) -> list[tuple]:
    return pg.execute(sql, db)


def test_ingest_lands_in_postgres_and_mlflow_server(deployment, cli, corpus, tmp_path, s3, monkeypatch):
    folder, truth = corpus
    cli.env.update(deployment.env, MLFLOW_TRACKING_URI=deployment.server.url)
    out = cli("ingest", str(folder), "--data-root", str(tmp_path / "data")).stdout
    n_videos, n_broken = len(truth["videos"]), len(truth["broken"])
    assert f"{n_videos} accepted, {n_broken} rejected" in out

    # Dagster: the runs and their materializations are in the Postgres database, seen through the instance ...
    instance = _instance(deployment, monkeypatch)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    runs = instance.get_runs()
    assert len(runs) >= 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    batches = instance.fetch_materializations(dg.AssetKey("ingested_batch"), limit=10).records
    assert batches and all(r.partition_key for r in batches)
    assert instance.fetch_materializations(dg.AssetKey("videos"), limit=10).records
    # ... and in its tables, read with psycopg2.
    pg_runs = dict(_query(deployment.pg, deployment.dagster_db, "SELECT run_id, status FROM runs"))
    assert pg_runs == {r.run_id: "SUCCESS" for r in runs}
    events = _query(deployment.pg, deployment.dagster_db,
                    "SELECT asset_key, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                    "GROUP BY asset_key")
    by_asset = {key: count for key, count in events}
    assert by_asset.get('["ingested_batch"]', 0) >= 1 and by_asset.get('["videos"]', 0) == 1

    # MLflow: the run is on the server, tagged with the Dagster run, and stored in the MLflow database.
    client = mlflow.MlflowClient(deployment.server.url)
    experiment = client.get_experiment_by_name("svdpipe")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ingest'")  # (its parent: the Dagster run)
    assert run.data.tags["dagster.run_id"] in pg_runs
    assert run.data.tags["dagster.asset"] == "ingested_batch"
    assert run.data.metrics["accepted"] == n_videos and run.data.metrics["rejected"] == n_broken
    stored = dict(_query(deployment.pg, deployment.mlflow_db, "SELECT run_uuid, status FROM runs"))
    assert stored[run.info.run_id] == "FINISHED" and set(stored.values()) == {"FINISHED"}

    # Artifacts: listed by the server, stored as objects in the bucket.
    assert "videos.csv" in [a.path for a in client.list_artifacts(run.info.run_id)]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=deployment.bucket)["Contents"]]
    (key,) = [k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/videos.csv")]
    assert key.startswith("artifacts/")
    body = s3.client().get_object(Bucket=deployment.bucket, Key=key)["Body"].read().decode()
    assert body.splitlines()[0].count("source_uri") == 1 and len(body.splitlines()) == 1 + n_videos + n_broken


@dg.op
def _step():
    pass


@dg.job
def _train():
    _step()


def test_queued_run_coordinator_limits(deployment, pg_databases, monkeypatch):
    """The instance queues submitted runs in Postgres; the daemon's dequeue pass keeps one training run at a time."""
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    db = pg_databases("queue")
    instance = _instance(deployment, monkeypatch, db)
    configured = yaml.safe_load(deploy.DAGSTER_POSTGRES_YAML.read_text())["concurrency"]["runs"]
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    queue = instance.get_concurrency_config().run_queue_config  # what the daemon dequeues by
    assert queue.max_concurrent_runs == configured["max_concurrent_runs"] == 4
    assert list(queue.tag_concurrency_limits) == configured["tag_concurrency_limits"]
    assert {"key": "svdpipe/stage", "value": "train", "limit": 1} in queue.tag_concurrency_limits
    assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"

    # Runs launched from the UI or a schedule come from a code location (the Helm chart's is named svdpipe).
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("svdpipe"), "__repository__"),
                             _train.name)

    def new_run(stage: str, **kw) -> dg.DagsterRun:
        return instance.create_run_for_job(_train, tags={"svdpipe/stage": stage}, remote_job_origin=origin, **kw)

    train = [new_run("train") for _ in range(3)]
    other = [new_run("curate") for _ in range(2)]
    for run in train + other:
        instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))
    statuses = dict(_query(deployment.pg, db, "SELECT run_id, status FROM runs"))
    assert set(statuses.values()) == {"QUEUED"} and len(statuses) == 5

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    chosen = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    picked = [r.run_id for r in chosen]
    assert len([r for r in picked if r in {t.run_id for t in train}]) == 1
    assert {o.run_id for o in other} <= set(picked)
    assert len(picked) == 3  # within max_concurrent_runs = 4

    # While a training run is in progress, no queued training run leaves the queue; the others still do.
    new_run("train", status=dg.DagsterRunStatus.STARTED)
    again = [r.run_id for r in daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)]
    assert sorted(again) == sorted(o.run_id for o in other)
