"""The one command that starts a stage: python for one process, torchrun for several, rendezvous for nodes."""

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
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=8" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("training.run") - 1] == "-m"


def test_several_nodes_need_a_rendezvous():
    with pytest.raises(ValueError, match="rendezvous"):
        command(1, "svd", nproc=8, nnodes=2)
    cmd = command(1, "svd", nproc=8, nnodes=2, rdzv_endpoint="node0:29400")
    assert "--rdzv-endpoint=node0:29400" in cmd and "--standalone" not in cmd
