"""Curation assets: score each batch's clips once, gather the clips table, select curated datasets by variant."""

import io
import time

import dagster as dg
from PIL import Image

from assets import guards
from assets.ingestion import ingested_batch, videos
from curation import batch_scoring, curated_dataset as curated, dedup, ingest
from assets.partitions import ingest_batches, variants
from assets.concurrency import POOL, writes_tables
from assets.resources import MlflowResource, RayClusterResource, SvdpipeResource
from svdpipe import tracking
from svdpipe.dvc_hash import dir_hash
from svdpipe.markdown import inline_image

_EAGER = dg.AutomationCondition.eager()


@dg.asset(
    pool=POOL,
    partitions_def=ingest_batches,
    deps=[ingested_batch],
    group_name="curation",
    automation_condition=_EAGER,
    description="Cuts, motion, text area, CLIP aesthetics, captions and text match for one batch's accepted videos.",
)
@writes_tables
def clip_scores(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource,
                ray_cluster: RayClusterResource) -> dg.MaterializeResult:
    cfg = svdpipe.config  # with compute.engine: ray, ray_cluster has connected this step to the cluster
    t0 = time.perf_counter()
    scored = batch_scoring.score_batch(svdpipe.storage, context.partition_key, cfg, progress=True)
    frame = scored.clips
    failed = frame[(frame["error"] != "") & ~frame["error"].str.startswith("unscored")]
    return dg.MaterializeResult(metadata={
        "videos": int(frame["video_id"].nunique()),
        "clips": int(len(frame)),
        "clips_failed": int(len(failed)),
        "clips_unscored_short": int(frame["error"].str.startswith("unscored").sum()),
        "scoring_version": batch_scoring.version_of(cfg),
        "engine": scored.engine,
        "nodes": scored.nodes,
        "videos_scored_now": scored.scored_now,
        "seconds": round(time.perf_counter() - t0, 2),
        "errors": dg.MetadataValue.md(
            "\n".join(f"- `{c}`: {e}" for c, e in failed[["clip_id", "error"]].head(20).itertuples(index=False))
            or "none"),
    })


@dg.asset(
    pool=POOL,
    deps=[clip_scores, videos],
    group_name="curation",
    automation_condition=_EAGER,
    description="`metadata/clips.parquet`: every detected shot of every accepted video, with all its scores.",
)
@writes_tables
def clips(svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    guards.accepted_videos(svdpipe.storage)
    cfg = svdpipe.config
    frame, embedded = dedup.mark_table(batch_scoring.consolidate(svdpipe.storage, cfg), cfg.dedup)
    ingest.write_table(svdpipe.storage, batch_scoring.CLIPS_KEY, frame)
    preview = frame.drop(columns=["motion_series", "text_area_per_frame", "score_frames", "image_embedding",
                                  "thumbnail_embedding"], errors="ignore").head(15)
    return dg.MaterializeResult(metadata={
        "clips": int(len(frame)),
        "near_duplicates": int(frame["duplicate_of"].notna().sum()),
        "dedup": f"{cfg.dedup.embedding} embeddings of {embedded} clips, cosine distance <= {cfg.dedup.max_distance}",
        "videos": int(frame["video_id"].nunique()),
        "hours": round(float(frame["duration_s"].sum()) / 3600, 4),
        "path": dg.MetadataValue.path(svdpipe.storage.uri(batch_scoring.CLIPS_KEY)),
        "preview": dg.MetadataValue.md(preview.to_markdown(index=False, floatfmt=".3g")),
    })


@dg.asset(
    pool=POOL,
    partitions_def=variants,
    deps=[clips],
    group_name="curation",
    # Blocking checks on `clips` (data_checks) must pass before a curated dataset is built from it.
    automation_condition=_EAGER & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="`curated/<variant>/`: the selected clip ids with thresholds, histograms, WebDataset shards; fails on "
    "a missing or empty clips table and on 0 clips kept (unless `variants.<variant>.allow_empty`).",
)
@writes_tables
def curated_dataset(
    context: dg.AssetExecutionContext, svdpipe: SvdpipeResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    variant = context.partition_key
    guards.clips_to_select(svdpipe.storage, variant, svdpipe.config)
    built = curated.build(svdpipe.storage, variant, svdpipe.config, progress=True)
    dvc = dir_hash(svdpipe.storage, curated.prefix(variant))
    sel = built.selection
    summary = sel.summary()
    with mlflow.start_run(context, f"curate {variant}", stage="curate", curation_variant=variant,
                          dataset_version=sel.fingerprint(), dvc_hash=dvc):
        import mlflow as mlflow_lib

        tracking.log_metrics({"clips_kept": len(sel.kept), "clips_total": sel.total, "clips_usable": sel.pool,
                              **{f"kept_by.{k}": v for k, v in sel.kept_by_filter.items()}})
        mlflow_lib.log_dict(summary, "selection.json")
        mlflow_lib.log_image(Image.open(io.BytesIO(built.histogram_png)), "histograms.png")
    return dg.MaterializeResult(metadata={
        "clips_kept": len(sel.kept),
        "clips_usable": sel.pool,
        "clips_total": sel.total,
        "kept_by_filter": dg.MetadataValue.json(sel.kept_by_filter),
        "thresholds": dg.MetadataValue.json(sel.thresholds),
        "dataset_version": sel.fingerprint(),
        "dvc_hash": dvc,
        "shards": dg.MetadataValue.json(built.shards),
        "shards_rebuilt": built.rebuilt_shards,
        "histograms": dg.MetadataValue.md(inline_image(built.histogram_png, "score histograms")),
        "histograms_path": dg.MetadataValue.path(svdpipe.storage.uri(f"{curated.prefix(variant)}/histograms.png")),
    })

