"""The multi-node hostfile is read by DeepSpeed's own parser; the launch command is built by its launcher code."""

from __future__ import annotations

import base64
import json

import pytest
from deepspeed.launcher.runner import fetch_hostfile, parse_inclusion_exclusion

from infra import deploy


def test_example_hostfile_parses():
    pool = fetch_hostfile(str(deploy.HOSTFILE_EXAMPLE))
    assert list(pool.items()) == [(f"gpu-node-{i}", 8) for i in range(4)]
    active = parse_inclusion_exclusion(pool, "", "gpu-node-3")
    assert list(active) == ["gpu-node-0", "gpu-node-1", "gpu-node-2"]


def test_dry_run_builds_the_multinode_command():
    launch = deploy.multinode_launch(deploy.HOSTFILE_EXAMPLE, "training.run", ["--stage", "stage2"])
    assert launch.world_size == 32 and launch.hosts == [f"gpu-node-{i}" for i in range(4)]
    cmd = launch.cmd
    assert cmd[0] == "pdsh" and cmd[cmd.index("-w") + 1] == ",".join(launch.hosts)
    assert "deepspeed.launcher.launch" in cmd and "--node_rank=%n" in cmd
    assert "--master_addr=gpu-node-0" in cmd and "--master_port=29500" in cmd
    # `--module training.run`: the per-node launcher runs `python -m training.run --stage stage2` on each rank.
    assert cmd[-3:] == ["training.run", "--stage", "stage2"] and "--module" in cmd
    (info,) = [a for a in cmd if a.startswith("--world_info=")]
    world = json.loads(base64.urlsafe_b64decode(info.split("=", 1)[1]))
    assert world == {h: list(range(8)) for h in launch.hosts}


def test_node_and_gpu_selection():
    two = deploy.multinode_launch(deploy.HOSTFILE_EXAMPLE, num_nodes=2)
    assert two.hosts == ["gpu-node-0", "gpu-node-1"] and two.world_size == 16
    some = deploy.multinode_launch(deploy.HOSTFILE_EXAMPLE, include="gpu-node-1:0,1,2,3@gpu-node-2")
    assert some.world_info == {"gpu-node-1": [0, 1, 2, 3], "gpu-node-2": list(range(8))}
    assert some.world_size == 12 and some.master_addr == "gpu-node-0"


@pytest.mark.parametrize("text", ["gpu-node-0 slots=8\ngpu-node-0 slots=8\n", "gpu-node-0 gpus=8\n", "# none\n"])
def test_bad_hostfiles_are_refused(tmp_path, text):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(text)
    with pytest.raises(ValueError):
        deploy.multinode_launch(hostfile)
