import mlflow
import pandas as pd
import pytest

from curation.sample_corpus import make_sample_corpus

COMMANDS = ["ingest", "sample-corpus", "settings", "ui"]


def test_help_for_every_command(cli):
    top = cli("--help").stdout
    for command in COMMANDS:
        assert command in top
        text = cli(command, "--help").stdout
        assert "Usage:" in text
    ingest_help = cli("ingest", "--help").stdout
    for option in ("--data-root", "--profile", "--set"):
        assert option in ingest_help


@pytest.fixture(scope="module")
def unseen_corpus(tmp_path_factory):
    """Videos no other test uses (another seed, size and rate)."""
    out = tmp_path_factory.mktemp("unseen")
    truth = make_sample_corpus(out, seed=4242, videos=3, seconds=5.0, fps=25, width=288, height=160)
    return out, truth


def test_ingest_folder_twice(cli, unseen_corpus, tmp_path):
    folder, truth = unseen_corpus
    root = tmp_path / "data"
    out = cli("ingest", str(folder), "--data-root", str(root)).stdout
    n_in = len(truth["videos"]) + len(truth["broken"])
    assert f"{n_in} inputs, {len(truth['videos'])} accepted, {len(truth['broken'])} rejected" in out
    table = pd.read_parquet(root / "metadata/videos.parquet")
    assert len(table) == n_in
    assert set(table.loc[table["status"] == "rejected", "source_uri"].str.rsplit("/", n=1).str[-1]) == set(
        truth["broken"])
    copies = sorted(p.name for p in (root / "raw").iterdir())
    out2 = cli("ingest", str(folder), "--data-root", str(root)).stdout
    assert f"0 new, {n_in} already known; 0 batch(es) to run" in out2
    assert len(pd.read_parquet(root / "metadata/videos.parquet")) == n_in
    assert sorted(p.name for p in (root / "raw").iterdir()) == copies

    # The run is in MLflow, tagged with the Dagster run, asset and partition that produced it, named
    # `<stage> <partition>`, the child of the parent run of its Dagster run (a model-development experiment).
    client = mlflow.MlflowClient(cli.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("svdpipe")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"]
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ingest'")
    assert run.data.tags["dagster.asset"] == "ingested_batch" and run.data.tags["dagster.partition"]
    assert run.info.run_name == f"ingest {run.data.tags['dagster.partition']}"
    assert run.data.metrics["accepted"] == len(truth["videos"])
    assert run.data.params["profile"] == "tiny"
    (parent,) = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags["dagster.run_id"] == run.data.tags["dagster.run_id"]

    # The Dagster runs are the named job `ingest`, not an ephemeral asset job.
    import dagster as dg

    with dg.DagsterInstance.from_config(cli.env["DAGSTER_HOME"]) as instance:
        jobs = {r.job_name for r in instance.get_runs()}
    assert jobs == {"ingest"}


def test_ingest_s3_prefix_into_s3_root(s3, bucket, cli, unseen_corpus):
    folder, truth = unseen_corpus
    src = s3.client()
    for path in folder.iterdir():
        src.upload_file(str(path), bucket, f"incoming/{path.name}")
    root = f"s3://{bucket}/root"
    out = cli("ingest", f"s3://{bucket}/incoming", "--data-root", root, "--set", "ingest.workers=2").stdout
    assert f"{len(truth['videos'])} accepted, {len(truth['broken'])} rejected" in out
    keys = [o["Key"] for o in src.list_objects_v2(Bucket=bucket, Prefix="root/")["Contents"]]
    assert "root/metadata/videos.parquet" in keys
    assert sum(k.startswith("root/raw/") for k in keys) == len(truth["videos"])
    out2 = cli("ingest", f"s3://{bucket}/incoming", "--data-root", root).stdout
    assert "0 new" in out2
    keys2 = [o["Key"] for o in src.list_objects_v2(Bucket=bucket, Prefix="root/")["Contents"]]
    assert sorted(keys2) == sorted(keys)


def test_bad_arguments_say_what_to_do(cli, tmp_path):
    proc = cli("ingest", str(tmp_path / "nowhere"), "--data-root", str(tmp_path / "d"), check=False)
    assert proc.returncode == 2 and "neither a folder" in proc.stderr
    proc = cli("ingest", str(tmp_path), "--profile", "huge", check=False)
    assert proc.returncode == 2 and "available: " in proc.stderr
    proc = cli("ingest", str(tmp_path), "--set", "ingest.workers=-1", check=False)
    assert proc.returncode == 2 and "workers" in proc.stderr
