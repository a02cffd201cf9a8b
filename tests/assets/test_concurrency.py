"""Dagster's side of one writer per data root: the writers share the root's pool; the queue runs one at a time."""

import subprocess
import sys

import dagster as dg
import yaml

from assets.concurrency import POOL, data_root_pool

WRITERS = {"ingested_batch", "videos", "clip_scores", "clips", "curated_dataset"}


def test_the_pool_is_the_data_roots(tmp_path):
    # In a fresh process: other tests in this one may have activated another configuration since the import.
    check = ("from assets.concurrency import POOL, data_root_pool; from svdpipe.config import load_config; "
             "assert POOL == data_root_pool(load_config().data_root)")
    subprocess.run([sys.executable, "-c", check], check=True, cwd=tmp_path)
    assert data_root_pool(str(tmp_path)) == data_root_pool(f"{tmp_path}/./") != data_root_pool(str(tmp_path / "x"))
    assert data_root_pool("s3://b/root/") == data_root_pool("s3://b/root") != data_root_pool("s3://b/other")


def test_queued_runs_on_one_data_root_leave_the_queue_one_at_a_time(tmp_path):
    from dagster._core.run_coordinator import SubmitRunContext
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin, RegisteredCodeLocationOrigin
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from orchestration.cli import INFRA
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    assert {name for name, p in pools.items() if p == {POOL}} == WRITERS  # training and evaluation are not held up

    config = yaml.safe_load((INFRA / "dagster.yaml").read_text())
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"),
                              overrides={k: config[k] for k in ("run_coordinator", "concurrency")}) as instance:
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("svdpipe"), "__repository__"),
                                 "curate")
        curate = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey("clips")})
        train = defs.resolve_job_def("train_variant")
        from dagster._core.execution.api import create_execution_plan

        def queued(job, **kw):
            plan = create_execution_plan(job, **kw)
            run = instance.create_run_for_job(job, remote_job_origin=origin, execution_plan=plan, **kw)
            instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))
            return run.run_id

        # What the CLI and the sensor do (ensure_pool) for the data root the code location's POOL was built from.
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        writers = [queued(curate) for _ in range(2)]
        trainer = queued(train, tags={"dagster/partition": "svd"})
        picked = {r.run_id for r in QueuedRunCoordinatorDaemon(interval_seconds=1)._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), None)}
        assert len(picked & set(writers)) == 1 and trainer in picked
