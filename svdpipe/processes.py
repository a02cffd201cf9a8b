"""Processes that stop with the process that started them, and telling later whether a recorded process still runs.

A training stage is a tree of processes: ``svdpipe train`` (Dagster, in-process) starts the stage under Dagster
Pipes (``training.run``, or the torchrun agent ``training.torchrun``), and torchrun starts its workers
(``training.run``, each in a session of its own). The kernel kills no child with its parent: a ``svdpipe train``
killed with SIGKILL would leave its stage training on, racing a restarted command for the same checkpoints. So a
parent names itself to the children it starts (``child_env``) and each child, first thing, asks the kernel to
SIGKILL it when that parent dies (``die_with_parent``, Linux's ``PR_SET_PDEATHSIG``): the whole tree stops with its
top, from any signal. A process nobody named a parent to (started by a person, a scheduler, DVC) is left alone,
except torchrun's workers, which always die with their agent (``training.torchrun``); off Linux this is a no-op.
The kernel signals when the *thread* that started the child ends: start such children from a thread that lives as
long as its process (Dagster runs a step on its process's main thread, in-process or not; torchrun starts its
workers from its main thread).

``identity``/``gone`` let a later process tell that a recorded one (a Dagster run's ``svdpipe`` command, a lock's
holder) has ended, even once its pid is reused.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import warnings

__all__ = ["PARENT_ENV", "child_env", "describe", "die_with_parent", "gone", "identity"]

PARENT_ENV = "SVDPIPE_PARENT_PID"  # the pid whose death kills the process that reads it
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LINUX = sys.platform.startswith("linux")


def child_env() -> dict[str, str]:
    """Environment entries for a child that should die with this process (it calls ``die_with_parent``)."""
    return {PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """Be SIGKILLed when the parent named in ``$SVDPIPE_PARENT_PID`` dies, and name this process to its own
    children. Call it at the start of the process, before any child is started."""
    named = os.environ.get(PARENT_ENV)
    if not _LINUX or not named or not named.isdigit():
        return
    parent = int(named)
    if parent == os.getpid():
        return  # this process set it up before exec-ing this program: the death signal survives exec
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        warnings.warn(f"prctl(PR_SET_PDEATHSIG) failed (errno {ctypes.get_errno()}): this process outlives its "
                      "parent", RuntimeWarning, stacklevel=2)
        return
    # The signal is armed from now on; a parent that died before that has already handed this process to another
    # (init or a subreaper), whose pid it now sees: stop as the signal would have stopped it.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    os.environ[PARENT_ENV] = str(os.getpid())  # inherited by the children it starts (torchrun copies os.environ)


def _machine() -> str:
    """This machine, and on Linux its boot and pid namespace: where a pid means the same process."""
    if not _LINUX:
        return socket.gethostname()
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{socket.gethostname()}/{boot}/{os.stat('/proc/self/ns/pid').st_ino}"


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks after boot; Linux), or None when it does not run (a zombie included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else fields[19]


def identity(pid: int | None = None) -> str:
    """``machine|pid|start``: a process (default this one) as ``gone`` recognises it later, pid reuse included."""
    pid = os.getpid() if pid is None else pid
    start = _start_ticks(pid) if _LINUX else ""
    if _LINUX and start is None:
        raise ProcessLookupError(pid)
    return f"{_machine()}|{pid}|{start}"


def describe(recorded: str) -> str:
    """``pid N on HOST`` of what ``identity`` recorded."""
    machine, pid, _ = recorded.rsplit("|", 2)
    return f"pid {pid} on {machine.split('/', 1)[0]}"


def gone(recorded: str) -> bool:
    """Whether the process ``identity`` recorded has ended. False when it cannot be told from here (another machine
    or namespace, an unreadable record): only a process known to be dead counts as gone."""
    try:
        machine, pid_text, start = recorded.rsplit("|", 2)
        pid = int(pid_text)
    except (AttributeError, ValueError):
        return False
    if machine != _machine():
        return False
    if _LINUX:
        return _start_ticks(pid) != start
    if os.name != "posix":
        return False  # Windows' os.kill would end the process, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
