import shutil

import dagster as dg

from assets.ingestion import ingested_batch, videos
from curation.ingest import read_table
from orchestration.definitions import defs
from assets.resources import MlflowResource, SvdpipeResource
from orchestration.sensors import new_videos_sensor


def _resources(root, watch, tmp_path):
    res = SvdpipeResource(profile="tiny", data_root=str(root),
                          overrides=[f"ingest.watch={watch}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
    return {"svdpipe": res, "mlflow": MlflowResource(svdpipe=res)}


def _tick(instance, resources):
    with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as ctx:
        return new_videos_sensor(ctx)


def test_sensor_turns_new_files_into_batch_runs(corpus, tmp_path):
    folder, truth = corpus
    watch = tmp_path / "watch"
    watch.mkdir()
    names = sorted(truth["videos"])
    shutil.copy(folder / names[0], watch / names[0])
    resources = _resources(tmp_path / "root", watch, tmp_path)
    with dg.instance_for_test() as instance:
        result = _tick(instance, resources)
        assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
        batch = result.run_requests[0].partition_key
        instance.add_dynamic_partitions("ingest_batch", [batch])  # what the daemon does with the request
        assert dg.materialize([ingested_batch], partition_key=batch, resources=resources, instance=instance).success
        assert dg.materialize([videos], resources=resources, instance=instance).success

        skip = _tick(instance, resources)
        assert isinstance(skip, dg.SkipReason) and "no new inputs" in str(skip.skip_message)

        for name in names[1:]:
            shutil.copy(folder / name, watch / name)
        result2 = _tick(instance, resources)
        batch2 = result2.run_requests[0].partition_key
        assert batch2 != batch
        instance.add_dynamic_partitions("ingest_batch", [batch2])
        dg.materialize([ingested_batch], partition_key=batch2, resources=resources, instance=instance)
        dg.materialize([videos], resources=resources, instance=instance)
        table = read_table(resources["svdpipe"].storage)
        assert sorted(table["source_uri"].str.rsplit("/", n=1).str[-1]) == names
        assert (table["status"] == "accepted").all()


def test_sensor_without_watch_skips(tmp_path):
    res = SvdpipeResource(profile="tiny", data_root=str(tmp_path))
    with dg.instance_for_test() as instance:
        skip = _tick(instance, {"svdpipe": res, "mlflow": MlflowResource(svdpipe=res)})
    assert isinstance(skip, dg.SkipReason) and "ingest.watch" in str(skip.skip_message)
