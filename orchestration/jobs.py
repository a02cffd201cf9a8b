"""Named jobs: what a run in the Dagster UI's run list and timeline says it did.

The CLI runs these same jobs (``svdpipe ingest`` runs ``ingest``, ``svdpipe curate`` runs ``score`` and
``curate``, ``svdpipe train`` runs ``train_variant``, ``svdpipe evaluate`` runs ``evaluate``: ``evaluation``, or
``base_evaluation`` with ``--stage 2``, then ``variant_comparison``); a job holds assets
of one partitioning (plus unpartitioned ones), so a command may run one job for several partitions.
``train_variant`` and ``retrain_finetune`` carry the training run tag, so that the run queue of
infra/dagster.postgres.yaml runs one training at a time. ``retrain_finetune`` is what the schedule starts:
rebuild the variant's curated dataset from the newest scored clips, its latents, Stage III on top of the
existing Stage II model, and the evaluation that decides whether the new model is registered.
"""

import dagster as dg

from assets.partitions import ingest_batches, variants
from assets.training import TRAIN_TAGS

ingest = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.assets("ingested_batch", "videos"),
    partitions_def=ingest_batches,
    description="Probe and store one batch of inputs; gather the videos table and check it.",
)

score = dg.define_asset_job(
    "score",
    selection=dg.AssetSelection.assets("clip_scores"),
    partitions_def=ingest_batches,
    description="Cuts and every clip score of one ingested batch (stored once; a rerun scores nothing).",
)

curate = dg.define_asset_job(
    "curate",
    selection=dg.AssetSelection.assets("clips", "curated_dataset"),
    partitions_def=variants,
    description="Gather and check the clips table; select one variant's curated dataset and write its shards.",
)

train_variant = dg.define_asset_job(
    "train_variant",
    selection=dg.AssetSelection.assets("clip_latents", "image_model", "video_model", "finetuned_model"),
    partitions_def=variants,
    tags=TRAIN_TAGS,
    description="Latents and Stages I-III of one curation variant.",
)

evaluate = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.assets("evaluation", "base_evaluation", "variant_comparison"),
    partitions_def=variants,
    description="Evaluate one variant's Stage III model (registration rule) and its Stage II base model (from "
    "text prompts); compare the variants per stage.",
)

retrain_finetune = dg.define_asset_job(
    "retrain_finetune",
    selection=dg.AssetSelection.assets("curated_dataset", "clip_latents", "finetuned_model", "evaluation"),
    partitions_def=variants,
    tags=TRAIN_TAGS,
    description="Stage III on the newest curated data, then evaluation and the registration rule.",
)

JOBS = [ingest, score, curate, train_variant, evaluate, retrain_finetune]
