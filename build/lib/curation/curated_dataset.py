"""Build ``curated/<variant>/``: the selection, its explanation, a histogram picture and the training shards."""

from __future__ import annotations

import json
from dataclasses import dataclass

from curation import ingest
from curation.batch_scoring import read_clips_table
from curation.plots import score_histograms
from curation.shards import write_shards
from curation.variants import Selection, select
from svdpipe.config import SvdpipeConfig
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
        shards = write_shards(root, f"{base}/shards", sel.kept, ingest.read_table(root), cfg.shards, progress)
    summary["shards"] = shards
    png = score_histograms(clips, sel)
    ingest.write_table(root, f"{base}/selection.parquet", sel.kept)
    root.write_bytes(f"{base}/histograms.png", png)
    root.write_text(f"{base}/selection.json", json.dumps(summary, indent=1))
    return CuratedDataset(sel, shards, png, rebuild)
