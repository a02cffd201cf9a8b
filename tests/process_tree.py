"""The processes a test started, found through their parents, and waiting for them to end (Linux's /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from svdpipe.processes import gone, identity


def descendants(pid: int) -> dict[str, str]:
    """Every process started under ``pid``, children of children included (found through their parents, so those in
    sessions of their own too): identity (``svdpipe.processes``) -> command line. Linux."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError):
            continue  # ended while we looked
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[identity(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (ProcessLookupError, FileNotFoundError):
                continue
            todo.append(child)
    return found


def survivors(processes: dict[str, str], timeout: float = 30) -> dict[str, str]:
    """Those of ``processes`` (``descendants``) still running once they all ended or ``timeout`` passed."""
    deadline = time.time() + timeout
    while (left := {k: v for k, v in processes.items() if not gone(k)}) and time.time() < deadline:
        time.sleep(0.2)
    return left


def kill_all(processes: dict[str, str]) -> None:
    """SIGKILL those of ``processes`` (``descendants``) still running: a failed test leaves none behind."""
    for recorded in processes:
        if not gone(recorded):
            os.kill(int(recorded.rsplit("|", 2)[1]), signal.SIGKILL)


def assert_tree_dies_with(parent: subprocess.Popen, tree: dict[str, str]) -> None:
    """SIGKILL ``parent`` alone (as ``kill -9 PID`` does) and assert every process of ``tree`` ends with it; whatever
    outlives it is killed, pass or fail."""
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert not survivors(tree)
    finally:
        parent.kill()
        kill_all(tree)
