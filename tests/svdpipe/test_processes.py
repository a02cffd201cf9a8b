"""Processes that die with the parent that names itself to them, and recognising a recorded process later (Linux)."""

import os
import signal
import subprocess
import sys

import pytest
from process_tree import assert_tree_dies_with

from svdpipe.processes import PARENT_ENV, child_env, describe, die_with_parent, gone, identity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")

# A child that arms itself, says which parent it now names to its own children, and waits for its input.
CHILD = f"""
import os, sys
from svdpipe.processes import die_with_parent
die_with_parent()
print(os.environ.get({PARENT_ENV!r}), flush=True)
sys.stdin.read()
"""
# A parent that starts CHILD named to it, prints the child's pid and waits to be killed.
PARENT = f"""
import os, subprocess, sys, time
from svdpipe.processes import child_env
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], env={{**os.environ, **child_env()}},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def _python(code: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
                            stdout=subprocess.PIPE, text=True, **kw)


def test_a_child_dies_with_its_parent_killed_by_sigkill():
    parent = _python(PARENT)
    child_pid, named = parent.stdout.readline().split()
    assert_tree_dies_with(parent, {identity(int(child_pid)): "child"})
    assert named == child_pid  # its own children would die with it in turn


def test_a_child_whose_parent_died_before_it_armed_kills_itself():
    # It names as its parent a process that has already ended: the kernel would never signal it.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    child = _python(CHILD, env={PARENT_ENV: ended.stdout.strip()}, stdin=subprocess.PIPE)
    assert child.wait(timeout=60) == -signal.SIGKILL


def test_without_a_named_parent_nothing_changes():
    child = _python(CHILD, env={PARENT_ENV: ""}, stdin=subprocess.DEVNULL)
    assert child.stdout.readline().strip() == "" and child.wait(timeout=60) == 0


def test_a_process_armed_before_exec_stays_armed(monkeypatch):
    monkeypatch.setenv(PARENT_ENV, str(os.getpid()))  # as after training.launch exec-ed into the stage
    die_with_parent()  # no self-kill: this process is the one named
    assert child_env() == {PARENT_ENV: str(os.getpid())}


def test_a_recorded_process_is_gone_once_it_ended_and_never_when_unknown():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    recorded = identity(proc.pid)
    assert not gone(recorded) and not gone(identity()) and describe(recorded).startswith(f"pid {proc.pid} on ")
    proc.communicate()
    assert gone(recorded)
    machine, pid, start = identity().rsplit("|", 2)
    assert gone(f"{machine}|{pid}|{int(start) + 1}")  # the same pid, another process: the recorded one ended
    assert not gone(f"another-machine|{proc.pid}|{start}") and not gone("") and not gone("garbage")
