"""The one command that starts a stage: python for one process, torchrun for several, rendezvous for nodes."""

import os
import subprocess
import sys

import pytest

from training.launch import command


def test_single_process_is_plain_python():
    cmd = command(2, "svd", profile="tiny", data_root="/d", overrides=["training.stages.2.steps=3"])
    assert cmd[:3] == [sys.executable, "-m", "training.run"]
    assert cmd[cmd.index("--stage") + 1] == "2" and cmd[cmd.index("--variant") + 1] == "svd"
    assert cmd[cmd.index("--set") + 1] == "training.stages.2.steps=3"


def test_several_processes_use_torchrun():
    cmd = command(3, "svd", nproc=8)
    assert cmd[1:3] == ["-m", "training.torchrun"] and "--nproc-per-node=8" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("training.run") - 1] == "-m"


def test_several_nodes_need_a_rendezvous():
    with pytest.raises(ValueError, match="rendezvous"):
        command(1, "svd", nproc=8, nnodes=2)
    cmd = command(1, "svd", nproc=8, nnodes=2, rdzv_endpoint="node0:29400")
    assert "--rdzv-endpoint=node0:29400" in cmd and "--standalone" not in cmd


def _nodes_config(*settings):
    from svdpipe.config import load_config

    return load_config("tiny", "s3://b/root", ["training.nproc=4", "training.nnodes=2", *settings])


def test_nodes_from_the_config_meet_at_one_rendezvous():
    from training.launch import for_config

    cmds = [for_config(_nodes_config("training.rdzv_endpoint=node0:29400", f"training.node_rank={rank}"), 2, "svd",
                       data_root="s3://b/root") for rank in (0, 1)]
    assert cmds[0] == cmds[1]  # c10d assigns node ranks: every node runs the very same command
    cmd = cmds[0]
    for flag in ("--nproc-per-node=4", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400"):
        assert flag in cmd
    assert not any(a.startswith("--node-rank") for a in cmd) and "--standalone" not in cmd
    (rdzv_id,) = [a for a in cmd if a.startswith("--rdzv-id=")]
    other_stage = for_config(_nodes_config("training.rdzv_endpoint=node0:29400"), 3, "svd")
    assert rdzv_id not in other_stage  # another stage on the same endpoint is another job


def test_static_rendezvous_passes_the_node_rank():
    from training.launch import for_config

    cmd = for_config(_nodes_config("training.rdzv_endpoint=node0:29500", "training.rdzv_backend=static",
                                   "training.node_rank=1"), 1, "svd")
    assert "--rdzv-backend=static" in cmd and "--node-rank=1" in cmd


def test_torchrun_accepts_the_flags():
    """The installed torchrun parses every flag ``command`` writes (``training.torchrun`` hands them to it)."""
    from torch.distributed.run import get_args_parser

    cmd = command(1, "svd", nproc=2, nnodes=2, rdzv_endpoint="node0:29400", rdzv_backend="static", node_rank=1,
                  job_id="svdpipe-x")
    args = get_args_parser().parse_args(cmd[3:])
    assert (args.nnodes, args.node_rank, args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == (
        "2", 1, "static", "node0:29400", "svdpipe-x")
    assert args.training_script == "training.run" and args.module


def test_several_nodes_need_an_endpoint_in_the_config():
    from svdpipe.config import load_config

    with pytest.raises(ValueError, match="rdzv_endpoint"):
        load_config("tiny", "/d", ["training.nnodes=2"])
    with pytest.raises(ValueError, match="node_rank"):
        load_config("tiny", "/d", ["training.nnodes=2", "training.rdzv_endpoint=a:1", "training.node_rank=2"])


def test_launch_module_prints_the_node_command(capsys, monkeypatch):
    from training.launch import main

    monkeypatch.setenv("SVDPIPE__TRAINING__NNODES", "2")
    monkeypatch.setenv("SVDPIPE__TRAINING__RDZV_ENDPOINT", "node0:29400")
    main(["--stage", "1", "--variant", "svd", "--data-root", "s3://b/root", "--profile", "tiny", "--dry-run"])
    out = capsys.readouterr().out
    assert "training.torchrun" in out and "--nnodes=2" in out and "--data-root s3://b/root" in out


# A worker arms itself (as training.run does), writes its pid and waits to be killed.
WORKER = """
import os, sys, time
from svdpipe.processes import die_with_parent
die_with_parent()
part = f"{sys.argv[1]}/{os.environ['RANK']}.part"
open(part, "w").write(str(os.getpid()))
os.replace(part, part[:-5])
time.sleep(600)
"""
# Started like a stage by svdpipe's asset (named as the agent's parent), the agent starts two WORKERs; this prints
# their pids and waits to be killed.
AGENT_PARENT = f"""
import os, subprocess, sys, time
from pathlib import Path
from svdpipe.processes import child_env
out = Path(sys.argv[1])
subprocess.Popen([sys.executable, "-m", "training.torchrun", "--standalone", "--nproc-per-node=2", "--no-python",
                  sys.executable, "-c", {WORKER!r}, str(out)], env={{**os.environ, **child_env()}})
while len(pids := [p for p in out.iterdir() if p.suffix != ".part"]) < 2:
    time.sleep(0.1)
print(" ".join(p.read_text() for p in pids), flush=True)
time.sleep(600)
"""


def test_torchrun_agent_and_workers_die_with_the_process_that_started_them(tmp_path):
    """SIGKILL of the process that started a several-process stage (svdpipe) ends the agent and every worker,
    though torchrun starts each worker in a session of its own."""
    from process_tree import assert_tree_dies_with, descendants

    parent = subprocess.Popen([sys.executable, "-c", AGENT_PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"})
    workers = parent.stdout.readline().split()
    tree = descendants(parent.pid)
    assert_tree_dies_with(parent, tree)
    assert len(workers) == 2 and all(any(f"|{w}|" in p for p in tree) for w in workers), tree
    assert any("training.torchrun" in cmd for cmd in tree.values())
