"""The data root's writer lock: one process at a time, reentrant within one, freed when its holder dies."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from svdpipe.storage import LOCK_KEY, LockBusy, open_storage

HOLDER = """
import sys, time
from svdpipe.storage import open_storage
with open_storage(sys.argv[1]).lock("holder in a test", wait_s=float(sys.argv[2]) or 0.5):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(root: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, root, str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    line = proc.stdout.readline().strip()
    if line != "held":
        proc.wait(timeout=30)
        raise LockBusy(f"the holder did not get the lock (exit {proc.returncode})")
    return proc


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    return str(tmp_path / "root") if request.param == "local" else f"s3://{request.getfixturevalue('bucket')}/root"


def test_a_second_process_waits_and_is_told_who_holds_it(root):
    holder = _hold(root, 3.0)
    held_at = time.monotonic()
    store = open_storage(root)
    with pytest.raises(LockBusy, match=rf"in use by holder in a test \(pid {holder.pid} on "):
        with store.lock("second", wait_s=0):
            pass
    told = []
    with store.lock("second", poll_s=0.2, on_wait=told.append):
        got = time.monotonic()
    assert got - held_at > 2.5  # only once the holder let go, after its 3 s
    holder.wait(timeout=30)
    assert len(told) == 1 and "holder in a test" in told[0]
    assert LOCK_KEY not in store.list()  # never listed as data


def test_a_killed_holder_frees_the_lock(root):
    """Locally the kernel drops a dead holder's flock; on S3 its lease, though not expired, names a process known
    dead on this machine (a `svdpipe curate` killed with SIGKILL): taken over at once."""
    holder = _hold(root, 60.0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with open_storage(root).lock("after the crash", wait_s=5, poll_s=0.1):
        pass


def test_an_expired_s3_lease_is_taken_over(bucket):
    store = open_storage(f"s3://{bucket}/root")
    stale = {"purpose": "crashed run", "pid": 1, "host": "gone", "since": "2020-01-01", "token": "x",
             "expires": time.time() - 1}
    store.client.put_object(Bucket=bucket, Key=f"root/{LOCK_KEY}", Body=json.dumps(stale).encode())
    with store.lock("after the crash", wait_s=0):
        pass
    assert not store.exists(LOCK_KEY)  # released: deleted


def test_the_lock_is_reentrant_within_a_process(root):
    store, again = open_storage(root), open_storage(root)
    with store.lock("outer", wait_s=0):
        with again.lock("inner step", wait_s=0):  # a CLI command runs its Dagster steps in-process
            pass
        with pytest.raises(LockBusy):  # while held here, another process is kept out
            _hold(root, 0)
    with store.lock("next", wait_s=0):  # fully released
        pass
