"""The evaluation set: one set of held-out clips shared by every curation variant.

Comparing curation variants asks which training data gives the better model *on the same test*, so the test
clips are chosen once, from the whole pool of usable clips (scored without error, long enough for every stage),
before any variant filter, and no variant trains on them. A clip is held out when a hash of its id,
h(c) = int(sha1(c)[:8], 16) / 2^32, is below ``evaluation.holdout_fraction``; when that gives fewer than
``evaluation.holdout_min_clips`` (a small corpus), the clips with the smallest h are taken, at most half the pool
so that training keeps data. Membership depends only on the clip id and the pool, never on a variant.
A clip that a variant's filter removes stays in the evaluation of that variant too.

The clips are cut once into ``eval_set/<fingerprint>/shards`` (curation's shard format), from which every
variant's latents take their evaluation rows (``training.latents``), so every variant is evaluated on the same
encoded inputs. ``fingerprint`` names the clips; ``protocol_fingerprint`` adds everything else that defines the
test (seed, sigmas, sampler, buckets, stage shape) and is the ``eval_set`` tag of every evaluation run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd

from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage

__all__ = ["EvalSet", "HELD_OUT", "choose", "clip_hash", "prepare", "protocol_fingerprint", "usable_pool",
           "with_held_out"]

HELD_OUT = "held out for evaluation (an evaluation clip of every variant)"


def clip_hash(clip_id: str) -> float:
    """h(c) in [0, 1): the first 32 bits of sha1(clip id)."""
    return int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


@dataclass(frozen=True)
class EvalSet:
    clip_ids: tuple[str, ...]  # sorted
    pool: int  # usable clips the set was chosen from

    @property
    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(list(self.clip_ids)).encode()).hexdigest()[:16]

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in set(self.clip_ids)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def summary(self) -> dict:
        return {"fingerprint": self.fingerprint, "clip_ids": list(self.clip_ids), "pool": self.pool}


def usable_pool(clips: pd.DataFrame, cfg: SvdpipeConfig) -> pd.DataFrame:
    """Clips any variant could use: scored without error, as long as the most lenient variant asks, and with
    enough frames for every training stage (so each evaluation clip has latents at every resolution)."""
    if clips.empty:
        return clips
    min_s = min((v.min_duration_s for v in cfg.variants.values()), default=0.0)
    frames = max(s.frames for s in cfg.training.stages.values())
    ok = (clips["error"].fillna("") == "") & (clips["duration_s"] >= min_s)
    ok &= (clips["end_frame"] - clips["start_frame"]) >= frames
    return clips[ok]


def choose(clips: pd.DataFrame, cfg: SvdpipeConfig) -> EvalSet:
    """The evaluation set of a clips table (module docstring); pure."""
    pool = usable_pool(clips, cfg)
    ev = cfg.evaluation
    ranked = sorted((clip_hash(c), c) for c in pool["clip_id"]) if len(pool) else []
    below = [c for h, c in ranked if h < ev.holdout_fraction]
    floor = min(ev.holdout_min_clips, len(ranked) // 2)
    chosen = below if len(below) >= floor else [c for _, c in ranked[:floor]]
    return EvalSet(tuple(sorted(chosen)), int(len(pool)))


def protocol_fingerprint(latents_fingerprint: dict, cfg: SvdpipeConfig, stage: int) -> str:
    """The ``eval_set`` tag: the clips and how they were encoded (the latents' fingerprint, whose ``eval_set``
    names the clips, less the variant's ``dataset_version``) plus every setting that changes what an evaluation
    measures. Two evaluations with the same tag ran the same test."""
    encoded = {k: v for k, v in latents_fingerprint.items() if k != "dataset_version"}
    ev = cfg.evaluation.model_dump(mode="json", exclude={"register_metric"})
    s = cfg.training.stages[str(stage)]
    text = json.dumps([encoded, cfg.seed, ev, [s.height, s.width, s.frames],
                       cfg.curation.clip.model_dump(mode="json"), cfg.curation.motion.model_dump(mode="json")],
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def prepare(root: Storage, cfg: SvdpipeConfig, progress: bool = True) -> tuple[EvalSet, list[str]]:
    """The evaluation set of the current clips table and its shards, written once per fingerprint."""
    from curation import ingest
    from curation.batch_scoring import read_clips_table
    from curation.shards import write_shards

    clips = read_clips_table(root)
    chosen = choose(clips, cfg)
    base = f"eval_set/{chosen.fingerprint}"
    marker = f"{base}/eval_set.json"
    if root.exists(marker):
        return chosen, json.loads(root.read_text(marker))["shards"]
    rows = clips[clips["clip_id"].isin(chosen.clip_ids)]
    shards = write_shards(root, f"{base}/shards", rows, ingest.read_table(root), cfg.shards, progress) if len(
        rows) else []
    root.write_text(marker, json.dumps({**chosen.summary(), "shards": shards}, indent=1))  # last: marks completion
    return chosen, shards


def with_held_out(training: Iterable[tuple], held_out: Iterable[tuple], chosen: EvalSet) -> Iterator[tuple]:
    """A variant's shard rows, then the evaluation set's, each ``(*row, role)``: ``"train"`` for a training clip,
    ``"held_out"`` for a variant clip that is in the evaluation set (not trained on), ``"eval"`` for an
    evaluation row (from the evaluation set's own shards, the same for every variant)."""
    ids = set(chosen.clip_ids)
    for row in training:
        yield (*row, "held_out" if row[0] in ids else "train")
    for row in held_out:
        yield (*row, "eval")
