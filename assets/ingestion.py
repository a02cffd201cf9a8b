"""Ingestion assets: one batch of raw inputs probed and stored, then the videos table over all batches."""

import dagster as dg

from curation import ingest
from assets.partitions import ingest_batches
from assets.concurrency import POOL, writes_tables
from assets.resources import MlflowResource, SvdpipeResource

def _reasons_markdown(frame) -> str:
    rejected = frame[frame["status"] == "rejected"]
    if rejected.empty:
        return "no input rejected"
    lines = ["| input | reason |", "| --- | --- |"]
    lines += [f"| `{u}` | {r.replace('|', '/')} |" for u, r in rejected[["source_uri", "reason"]].itertuples(index=False)]
    return "\n".join(lines)

@dg.asset(
    pool=POOL,
    partitions_def=ingest_batches,
    group_name="ingestion",
    description="One batch of inputs: each fetched, hashed, probed with PyAV, stored under `raw/` or `quarantine/`.",
)
@writes_tables
def ingested_batch(
    context: dg.AssetExecutionContext, svdpipe: SvdpipeResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    cfg = svdpipe.config
    frame = ingest.ingest_batch(svdpipe.storage, context.partition_key, cfg.ingest, progress=False)
    counts = ingest.summarize(frame)
    with mlflow.start_run(context, f"ingest {context.partition_key}", stage="ingest"):
        import mlflow as mlflow_lib

        mlflow_lib.log_metrics(counts)
        mlflow_lib.log_text(frame.to_csv(index=False), "videos.csv")
    context.log.info("batch %s: %s", context.partition_key, counts)
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in counts.items()},
            "table": dg.MetadataValue.path(svdpipe.storage.uri(ingest.batch_key(context.partition_key,
                                                                                "videos.parquet"))),
            "rejected_inputs": dg.MetadataValue.md(_reasons_markdown(frame)),
            }
    )

@dg.asset(
    pool=POOL,
    deps=[ingested_batch],
    group_name="ingestion",
    automation_condition=dg.AutomationCondition.eager(),
    description="`metadata/videos.parquet`: one row per input of every batch, accepted or rejected with a reason.",
)
@writes_tables
def videos(svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    frame = ingest.consolidate(svdpipe.storage)
    counts = ingest.summarize(frame)
    by_reason = (
        frame.loc[frame["status"] == "rejected", "reason"].str.split(":").str[0].value_counts().to_dict()
    )
    return dg.MaterializeResult(
        metadata={
            **counts,
            "path": dg.MetadataValue.path(svdpipe.storage.uri(ingest.VIDEOS_KEY)),
            "rejections_by_kind": dg.MetadataValue.json(by_reason),
            "preview": dg.MetadataValue.md(frame.head(20).drop(columns=["ingested_at"]).to_markdown(index=False)),
            "config": dg.MetadataValue.json(svdpipe.config.flat()),
        }
    )
