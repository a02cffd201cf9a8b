"""The MLflow run of a materialization, as the Dagster UI shows it: a link to the run's page where MLflow has a
web UI (a tracking server, or ``mlflow.ui_url``), its id where it has none (a SQLite store)."""

import dagster as dg
import mlflow

from assets.ingestion import ingested_batch
from assets.resources import SvdpipeResource, mlflow_run
from orchestration.definitions import defs
from orchestration.sensors import new_videos_sensor
from svdpipe import tracking
from training.stage_report import materialization_metadata


def test_an_ingested_batch_links_its_mlflow_run_in_the_configured_ui(watched_resources, tmp_path):
    resources = watched_resources("mlflow.ui_url=http://mlflow.example:5000")
    res = resources["svdpipe"]
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as ctx:
            batch = new_videos_sensor(ctx).run_requests[0].partition_key
        instance.add_dynamic_partitions("ingest_batch", [batch])
        result = dg.materialize([ingested_batch], partition_key=batch, resources=resources, instance=instance)
    (mat,) = result.asset_materializations_for_node("ingested_batch")
    link = mat.metadata["mlflow_run"]
    assert isinstance(link, dg.UrlMetadataValue)
    (run,) = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(
        [tracking.ensure_experiment(res.config)], "tags.stage = 'ingest'")
    assert link.url == f"http://mlflow.example:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"

    # The same run without a UI to open it in: its id. A training stage (through Pipes) says the same.
    plain = SvdpipeResource(profile="tiny", data_root=str(tmp_path / "root"),
                            overrides=[f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]).config
    assert mlflow_run(plain, run.info.run_id) == run.info.run_id
    assert materialization_metadata(plain, {"run_id": run.info.run_id}, False)["mlflow_run"] == run.info.run_id
    piped = materialization_metadata(res.config, {"run_id": run.info.run_id}, False)["mlflow_run"]
    assert piped == {"type": "url", "raw_value": link.url}
