"""Training with the data root on S3: checkpoints under the root, `svdpipe train` resumed after a SIGKILL, across two
nodes.

Two "nodes" are two launchers (``python -m training.launch``, torchrun with ``--nnodes 2`` and a c10d rendezvous)
on this machine, each with its own working folder and project home, so their checkpoint caches stand in for
node-local disks; the data root and the checkpoints' home is a bucket on the session's SeaweedFS server.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import dagster as dg
import pytest
from process_tree import assert_tree_dies_with, descendants, kill_all, survivors

from s3_gate import S3Gate
from stage_process import (
    LATEST_WRITTEN, VARIANT, assert_same_losses, kill, latest_step, losses, stage_args, start, wait,
    wait_for_checkpoint,
)
from svdpipe.config import load_config
from svdpipe.storage import LocalStorage, open_storage
from training.checkpoints import for_stage
from training.latents import build_latents

from tests.conftest import SVDPIPE

STEPS = 8
SETTINGS = [f"training.stages.1.steps={STEPS}", "training.checkpoint_every=2", "training.keep_checkpoints=2"]
CKPT = f"checkpoints/{VARIANT}/stage1"


@pytest.fixture(scope="module")
def with_latents(tmp_path_factory, curated_root) -> Path:
    """A local data root with the curated corpus and its stage-1 latents, copied to S3 by each test."""
    root = tmp_path_factory.mktemp("latents") / "data"
    shutil.copytree(curated_root, root)
    build_latents(open_storage(str(root)), VARIANT, load_config("tiny", str(root), SETTINGS), progress=False)
    return root


def _s3_copy(local: Path, uri: str) -> str:
    src, dst = LocalStorage(local), open_storage(uri)
    for key in src.list():
        dst.upload(src.local_path(key), key)
    return uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_checkpoints_live_under_their_own_data_root(s3, bucket, tmp_path, monkeypatch):
    """Two S3 roots trained from one folder: two homes and two caches, nothing shared."""
    monkeypatch.chdir(tmp_path)
    a, b = (for_stage(open_storage(f"s3://{bucket}/{name}"), VARIANT, 1) for name in ("a", "b"))
    assert a.uri() == f"s3://{bucket}/a/{CKPT}" and b.uri() == f"s3://{bucket}/b/{CKPT}"
    assert a.local_dir != b.local_dir and tmp_path not in a.local_dir.parents


@pytest.mark.slow
def test_svdpipe_train_killed_resumes_from_its_checkpoints_under_the_s3_root(s3, bucket, with_latents, tmp_path):
    """`svdpipe train` on an S3 root, its own process SIGKILLed (`kill -9 PID`) after the first checkpoint: no
    process of its stage trains on, and started again it resumes from the checkpoints under the root, logging the
    uninterrupted command's per-step losses in the same MLflow run; the Dagster run the killed command left is
    failed. Both roots hold the same clips and train from one folder, each run with its own project home, Dagster
    instance and MLflow store (a new user): the second starts from step 0, never from the first root's checkpoints."""
    whole, killed = (_s3_copy(with_latents, f"s3://{bucket}/{name}") for name in ("whole", "killed"))
    folder = tmp_path / "work"
    folder.mkdir()

    def train(root, name, s3_endpoint=s3.endpoint):
        env = {"SVDPIPE_HOME": str(tmp_path / name / "home"), "DAGSTER_HOME": str(tmp_path / name / "dagster"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/{name}.db", "AWS_ENDPOINT_URL": s3_endpoint}
        return start([SVDPIPE, "train", *stage_args(root, SETTINGS)], tmp_path / f"{name}.log", env=env, cwd=folder)

    wait(train(whole, "whole"), tmp_path / "whole.log")
    with S3Gate(s3.endpoint, LATEST_WRITTEN) as gate:  # the run stalls after its first checkpoint until killed
        proc = train(killed, "killed", gate.url)
        wait_for_checkpoint(killed, 2, [proc], tmp_path / "killed.log", gate=gate)
        stage = descendants(proc.pid)
        assert_tree_dies_with(proc, stage)  # the command's process only is killed, as `kill -9 PID` does
        assert any("training.run" in cmd for cmd in stage.values()), stage
    assert latest_step(killed) < STEPS
    assert not open_storage(killed).exists(f"models/{VARIANT}/stage1/svdpipe_model.json")
    wait(train(killed, "killed"), tmp_path / "killed.log")

    info = json.loads(open_storage(killed).read_text(f"models/{VARIANT}/stage1/svdpipe_model.json"))
    assert 2 <= info["resumed_from"] < STEPS
    resumed = losses(f"sqlite:///{tmp_path}/killed.db")
    assert_same_losses(losses(f"sqlite:///{tmp_path}/whole.db"), resumed, STEPS)
    for root in (whole, killed):  # each root holds its own newest checkpoints, nothing is left in the folder
        ckpt = for_stage(open_storage(root), VARIANT, 1)
        assert ckpt.uri() == f"{root}/{CKPT}"
        assert ckpt.tags() == [f"step{STEPS - 2}", f"step{STEPS}"] and ckpt.latest() == f"step{STEPS}"
    assert list(folder.iterdir()) == []
    with dg.DagsterInstance.from_config(str(tmp_path / "killed" / "dagster")) as instance:
        done, failed = instance.get_runs()  # newest first
        assert done.status == dg.DagsterRunStatus.SUCCESS and failed.status == dg.DagsterRunStatus.FAILURE
        # What the resumed stage reports starts at step 1, as the uninterrupted stage's does.
        first = instance.get_latest_materialization_event(dg.AssetKey("image_model")).asset_materialization
        assert first.metadata["first_loss"].value == resumed[1]


@pytest.mark.slow
def test_two_nodes_killed_and_restarted_match_uninterrupted_run(s3, bucket, with_latents, tmp_path):
    """Two nodes of one process each train an S3 root; one node is SIGKILLed after a checkpoint (its worker dies with
    it), both are started again, and the per-step losses are the uninterrupted two-node run's. The root holds every
    rank's files."""
    whole, killed = (_s3_copy(with_latents, f"s3://{bucket}/{name}") for name in ("whole", "killed"))
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    for node in nodes:
        (node / "home").mkdir(parents=True)

    def launch_nodes(root, name, s3_endpoint=s3.endpoint):
        endpoint = f"127.0.0.1:{_free_port()}"
        settings = [*SETTINGS, "training.nnodes=2", f"training.rdzv_endpoint={endpoint}"]
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/{name}.db", "OMP_NUM_THREADS": "1",
               "AWS_ENDPOINT_URL": s3_endpoint}
        return [start(["-m", "training.launch", *stage_args(root, settings)], tmp_path / f"{name}-{node.name}.log",
                      env={**env, "SVDPIPE_HOME": str(node / "home")}, cwd=node) for node in nodes]

    def wait_nodes(procs, name):
        for proc, node in zip(procs, nodes):
            wait(proc, tmp_path / f"{name}-{node.name}.log")

    wait_nodes(launch_nodes(whole, "whole"), "whole")
    root_files = _tag_files(whole, f"step{STEPS}")
    cache_files = [_cache_files(node, whole, f"step{STEPS}") for node in nodes]
    # Every rank's ZeRO shard reached the root, each uploaded from the node that wrote it.
    assert {f for f in root_files if "optim_states" in f} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert set().union(*cache_files) == root_files and all(files < root_files for files in cache_files)

    with S3Gate(s3.endpoint, LATEST_WRITTEN) as gate:  # the run stalls after its first checkpoint until killed
        procs = launch_nodes(killed, "killed", gate.url)
        wait_for_checkpoint(killed, 2, procs, tmp_path / "killed-node1.log", gate=gate)
        node1 = descendants(procs[1].pid)
        kill(procs[1])
        try:  # node 1's worker, in a session of its own, dies with its torchrun agent (training.torchrun)
            assert not survivors(node1)
        finally:
            kill_all(node1)
        # Node 0 is held at the gate (never reaching a collective that would fail); a cluster restarts the whole
        # job after a node dies, so the test stops it as well.
        kill(procs[0])
    assert 2 <= latest_step(killed) < STEPS
    wait_nodes(launch_nodes(killed, "killed"), "killed")

    info = json.loads(open_storage(killed).read_text(f"models/{VARIANT}/stage1/svdpipe_model.json"))
    assert info["world_size"] == 2 and 2 <= info["resumed_from"] < STEPS
    assert_same_losses(losses(f"sqlite:///{tmp_path}/whole.db"), losses(f"sqlite:///{tmp_path}/killed.db"), STEPS)
    assert _tag_files(killed, f"step{STEPS}") == root_files


def _tag_files(root: str, tag: str) -> set[str]:
    prefix = f"{CKPT}/{tag}/"
    return {k[len(prefix):] for k in open_storage(root).list(f"{CKPT}/{tag}")}


def _cache_files(node: Path, root: str, tag: str) -> set[str]:
    with pytest.MonkeyPatch.context() as env:  # the cache folder as the node's project home names it
        env.setenv("SVDPIPE_HOME", str(node / "home"))
        cache = for_stage(open_storage(root), VARIANT, 1).local_dir / tag
    assert cache.is_dir(), cache
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
