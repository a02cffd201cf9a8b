"""One writer per data root, whoever starts it: the Dagster pool of a data root and the storage lock in each step.

* **Pool.** Every asset that writes the tables of a data root (the ingestion batches, the videos table, the clip
  scores, the clips table, the curated datasets) is in the pool ``svdpipe_root_<hash of the root>``. The instance
  (infra/dagster.yaml) limits every pool to one run at a time (``granularity: run``), so a sensor-started run, a
  backfill and a run from the UI on the same data root queue behind each other instead of interleaving; runs on
  other data roots are not held up.
* **Lock.** The same steps hold ``Storage.lock`` while they run, which also covers what Dagster's queue cannot
  see: the ``svdpipe`` command, which executes in its own process (and takes the lock for its whole command).
"""

import functools
import hashlib
from pathlib import Path

from svdpipe.config import load_config
from svdpipe.storage import is_s3


def data_root_pool(root: str) -> str:
    """The pool of a data root: one name per folder (however it is spelled) or S3 prefix."""
    canonical = root.rstrip("/") if is_s3(root) else str(Path(root).expanduser().resolve())
    return f"svdpipe_root_{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


# The code location serves one data root (SVDPIPE_DATA_ROOT); its writers share one pool.
POOL = data_root_pool(load_config().data_root)


def ensure_pool(instance, root: str) -> None:
    """Give the data root's pool its limit in the instance now: Dagster's queue only limits a pool it already
    knows, so the first two runs on a fresh instance could otherwise leave the queue together."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits and instance.global_op_concurrency_default_limit:
        storage.initialize_concurrency_limit_to_default(data_root_pool(root))


def writes_tables(fn):
    """Run the asset body holding its data root's storage lock (waits, and says so in the run's log)."""

    @functools.wraps(fn)  # Dagster reads the wrapped signature: context and resources are passed as before
    def holding_lock(*args, **kwargs):
        context = args[0] if args else kwargs.get("context")
        svdpipe = kwargs["svdpipe"]
        run = f"Dagster run {context.run.run_id[:8]}: " if context is not None else "Dagster run: "
        with svdpipe.storage.lock(run + fn.__name__, on_wait=context.log.info if context is not None else None):
            return fn(*args, **kwargs)

    return holding_lock
