"""Empty or missing input fails the asset loudly, before any work and before anything is written.

A materialization is a promise that the asset holds data: an asset reading a missing or empty table would
otherwise "succeed" with nothing, become the partition's latest materialization and log an empty MLflow run.
Each guard raises ``dagster.Failure`` naming the data root and the step that makes the missing input.
"""

from __future__ import annotations

import json

import dagster as dg

from curation import ingest
from curation.batch_scoring import read_clips_table
from curation.clips_table import CLIPS_KEY
from curation.variants import select
from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage
from training import model_store


def _fail(root: Storage, what: str, fix: str) -> dg.Failure:
    return dg.Failure(f"{what} (data root {root.root}): {fix}",
                      metadata={"data_root": str(root.root), "fix": fix})


def accepted_videos(root: Storage) -> None:
    """The videos table exists and accepts at least one video (what the clips table is made from)."""
    table = ingest.read_optional(root, ingest.VIDEOS_KEY)
    if table is None:
        raise _fail(root, f"no videos table {ingest.VIDEOS_KEY}", "ingest videos first (svdpipe ingest SOURCE, "
                    "or materialize ingested_batch and videos)")
    if not (table["status"] == "accepted").any():
        raise _fail(root, f"the videos table has {len(table)} rows and no accepted video",
                    "ingest readable videos (the table's `reason` column says why each input was rejected)")


def clips_to_select(root: Storage, variant: str, cfg: SvdpipeConfig) -> int:
    """The clips table exists and is not empty, and ``variant`` keeps a clip of it (or allows keeping none);
    returns how many it keeps."""
    if not root.exists(CLIPS_KEY):
        raise _fail(root, f"no clips table {CLIPS_KEY}", "materialize clips first (svdpipe curate)")
    clips = read_clips_table(root)
    if clips.empty:
        raise _fail(root, f"the clips table {CLIPS_KEY} has 0 clips",
                    "score ingested videos first (materialize clip_scores and clips, or svdpipe curate)")
    if variant not in cfg.variants:
        raise _fail(root, f"unknown variant {variant!r}", f"configured: {', '.join(sorted(cfg.variants))}")
    kept = len(select(clips, variant, cfg.variants[variant]).kept)
    if kept == 0 and not cfg.variants[variant].allow_empty:
        raise _fail(root, f"variant {variant!r} keeps 0 of {len(clips)} clips",
                    f"loosen its filters, add videos, or set variants.{variant}.allow_empty=true")
    return kept


def curated_clips(root: Storage, variant: str) -> None:
    """``curated/<variant>`` exists and holds at least one clip (what latents are computed from)."""
    key = f"curated/{variant}/selection.json"
    if not root.exists(key):
        raise _fail(root, f"no curated dataset {variant!r}", f"materialize curated_dataset[{variant}] first "
                    f"(svdpipe curate --variant {variant})")
    if not json.loads(root.read_text(key)).get("clips_kept"):
        raise _fail(root, f"the curated dataset {variant!r} has 0 clips", "nothing to train on: curate more clips")


def latents(root: Storage, variant: str) -> None:
    """``latents/<variant>`` holds encoded clips (what every training stage and the evaluation read)."""
    if not root.list(f"latents/{variant}"):
        raise _fail(root, f"no clip latents for {variant!r}", f"materialize clip_latents[{variant}] first "
                    f"(svdpipe train --variant {variant})")


def model(root: Storage, variant: str, stage: int) -> dict:
    """The complete model of ``stage`` for ``variant``; returns its info."""
    info = model_store.read_info(root, model_store.model_key(variant, stage))
    if info is None:
        asset = {1: "image_model", 2: "video_model", 3: "finetuned_model"}[stage]
        raise _fail(root, f"no Stage {'I' * stage} model for {variant!r}",
                    f"materialize {asset}[{variant}] first (svdpipe train --variant {variant} --stage {stage})")
    return info
