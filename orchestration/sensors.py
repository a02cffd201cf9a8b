"""The new-videos sensor: plans a batch of inputs not seen before under ``ingest.watch`` and requests its run.

It runs by default when the code location's config sets ``ingest.watch`` (project settings, params or
``SVDPIPE__INGEST__WATCH``): watching a folder is what setting it asks for. Without it the sensor starts stopped.
"""

import dagster as dg

from assets.concurrency import ensure_pool
from assets.ingestion import ingested_batch
from curation.ingest import plan_batches
from assets.partitions import ingest_batches
from assets.resources import SvdpipeResource
from svdpipe.config import active_sources
from svdpipe.sources import list_inputs
from svdpipe.storage import LockBusy

WATCHING = bool(active_sources().config.ingest.watch)


@dg.sensor(
    asset_selection=[ingested_batch],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING if WATCHING else dg.DefaultSensorStatus.STOPPED,
    description="Watches ingest.watch (a folder or s3:// prefix); each set of new files becomes a batch partition.",
)
def new_videos_sensor(context: dg.SensorEvaluationContext, svdpipe: SvdpipeResource):
    cfg = svdpipe.config
    if not cfg.ingest.watch:
        return dg.SkipReason("ingest.watch is not set (SVDPIPE__INGEST__WATCH=/path or s3://bucket/prefix)")
    uris = list_inputs(cfg.ingest.watch, cfg.ingest.ignore)
    try:  # a command or run writing this data root: plan on a later tick rather than beside it
        with svdpipe.storage.lock("new-videos sensor", wait_s=0):
            todo, new = plan_batches(svdpipe.storage, uris, uris.refused)
    except LockBusy as e:
        return dg.SkipReason(str(e))
    registered = set(context.instance.get_dynamic_partitions(ingest_batches.name))
    # A batch planned but never registered (the sensor stopped in between) is picked up on the next tick.
    unregistered = [b for b in todo if b not in registered]
    if not unregistered:
        return dg.SkipReason(f"no new inputs under {cfg.ingest.watch} ({len(uris)} known)")
    context.log.info("%d new inputs under %s -> batches %s", len(new), cfg.ingest.watch, unregistered)
    ensure_pool(context.instance, cfg.data_root)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=b) for b in unregistered],
        dynamic_partitions_requests=[ingest_batches.build_add_request(unregistered)],
    )
