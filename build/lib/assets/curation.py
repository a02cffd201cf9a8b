"""Curation assets: score each batch's clips once, gather the clips table, select curated datasets by variant."""

import io
import time

import dagster as dg
from PIL import Image

from assets import guards
from assets.ingestion import ingested_batch, videos
from curation import batch_scoring, curated_dataset as curated
from assets.partitions import ingest_batches, variants
from assets.resources import MlflowResource, SvdpipeResource
from svdpipe.dvc_hash import dir_hash
from svdpipe.markdown import inline_image

_EAGER = dg.AutomationCondition.eager()


@dg.asset(
    partitions_def=ingest_batches,
    deps=[ingested_batch],
    group_name="curation",
    automation_condition=_EAGER,
    description="Cuts, motion, text area, CLIP aesthetics, captions and text match for one batch's accepted videos.",
)
def clip_scores(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    cfg = svdpipe.config
    t0 = time.perf_counter()
    frame = batch_scoring.score_batch(svdpipe.storage, context.partition_key, cfg, progress=True)
    failed = frame[(frame["error"] != "") & ~frame["error"].str.startswith("unscored")]
    return dg.MaterializeResult(metadata={
        "videos": int(frame["video_id"].nunique()),
        "clips": int(len(frame)),
        "clips_failed": int(len(failed)),
        "clips_unscored_short": int(frame["error"].str.startswith("unscored").sum()),
        "scoring_version": batch_scoring.version_of(cfg),
        "seconds": round(time.perf_counter() - t0, 2),
        "errors": dg.MetadataValue.md(
            "\n".join(f"- `{c}`: {e}" for c, e in failed[["clip_id", "error"]].head(20).itertuples(index=False))
            or "none"),
    })


@dg.asset(
    deps=[clip_scores, videos],
    group_name="curation",
    automation_condition=_EAGER,
    description="`metadata/clips.parquet`: every detected shot of every accepted video, with all its scores.",
)
def clips(svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    guards.accepted_videos(svdpipe.storage)
    frame = batch_scoring.consolidate(svdpipe.storage, svdpipe.config)
    preview = frame.drop(columns=["motion_series", "text_area_per_frame", "score_frames"]).head(15)
    return dg.MaterializeResult(metadata={
        "clips": int(len(frame)),
        "videos": int(frame["video_id"].nunique()),
        "hours": round(float(frame["duration_s"].sum()) / 3600, 4),
        "path": dg.MetadataValue.path(svdpipe.storage.uri(batch_scoring.CLIPS_KEY)),
        "preview": dg.MetadataValue.md(preview.to_markdown(index=False, floatfmt=".3g")),
    })


@dg.asset(
    partitions_def=variants,
    deps=[clips],
    group_name="curation",
    # Blocking checks on `clips` (data_checks) must pass before a curated dataset is built from it.
    automation_condition=_EAGER & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="`curated/<variant>/`: the selected clip ids with thresholds, histograms, WebDataset shards; fails on "
    "a missing or empty clips table and on 0 clips kept (unless `variants.<variant>.allow_empty`).",
)
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
                          dataset_version=sel.fingerprint(), dvc_hash=dvc) as run:
        import mlflow as mlflow_lib

        mlflow_lib.log_metrics({"clips_total": sel.total, "clips_usable": sel.pool, "clips_kept": len(sel.kept),
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
        "mlflow_run_id": run.info.run_id,
    })

