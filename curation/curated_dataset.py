"""Build ``curated/<variant>/``: the selection, its explanation, a histogram picture and the training shards."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from curation import ingest
from curation.batch_scoring import read_clips_table
from curation.plots import score_histograms
from curation.shards import encode_clips, prune_encoded, write_shards
from curation.variants import Selection, select
from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage


def prefix(variant: str) -> str:
    return f"curated/{variant}"


@dataclass
class CuratedDataset:
    selection: Selection
    shards: list[str]
    histogram_png: bytes
    rebuilt_shards: bool


def build(root: Storage, variant: str, cfg: SvdpipeConfig, progress: bool = True) -> CuratedDataset:
    if variant not in cfg.variants:
        raise ValueError(f"unknown variant {variant!r}; configured: {', '.join(cfg.variants)}")
    clips = read_clips_table(root)
    sel = select(clips, variant, cfg.variants[variant])
    base = prefix(variant)
    summary = {**sel.summary(), "description": cfg.variants[variant].description,
               "shards_config": cfg.shards.model_dump(mode="json")}
    previous = json.loads(root.read_text(f"{base}/selection.json")) if root.exists(f"{base}/selection.json") else {}
    shards = sorted(k for k in root.list(f"{base}/shards") if k.endswith(".tar"))
    # Shards are rebuilt only when the selection or the shard settings changed (a rerun is cheap and idempotent).
    rebuild = not shards or {k: previous.get(k) for k in ("clip_ids_sha1", "shards_config")} != {
        k: summary[k] for k in ("clip_ids_sha1", "shards_config")}
    if rebuild:
        videos = ingest.read_table(root)
        # Every configured variant's clips in one pass, each encoded once: the other variants then only assemble tars.
        union = pd.concat([select(clips, v, cfg.variants[v]).kept for v in sorted(cfg.variants)])
        union = union.drop_duplicates("clip_id")
        encode_clips(root, union, videos, cfg.shards, progress)
        shards = write_shards(root, f"{base}/shards", sel.kept, videos, cfg.shards, progress)
        prune_encoded(root, set(union["clip_id"]), cfg.shards)
    summary["shards"] = shards
    png = score_histograms(clips, sel)
    ingest.write_table(root, f"{base}/selection.parquet", sel.kept)
    root.write_bytes(f"{base}/histograms.png", png)
    root.write_text(f"{base}/selection.json", json.dumps(summary, indent=1))
    return CuratedDataset(sel, shards, png, rebuild)
