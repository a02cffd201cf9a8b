"""The evaluation set: chosen once from every usable clip by a hash of the clip id, the same for every variant,
never trained on; a variant's latents carry it whatever the variant's filter keeps."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from curation.batch_scoring import read_clips_table
from curation.variants import select
from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.eval_set import HELD_OUT, choose, clip_hash, protocol_fingerprint, usable_pool
from training.latents import build_latents, load_latents


def _clips(n: int, **over) -> pd.DataFrame:
    rows = [{"clip_id": f"v-{i:07d}-{i + 40:07d}", "error": "", "duration_s": 2.0, "start_frame": i,
             "end_frame": i + 40} for i in range(n)]
    frame = pd.DataFrame(rows)
    for k, v in over.items():
        frame[k] = v
    return frame


def test_chosen_by_clip_hash_from_the_usable_pool():
    cfg = load_config("tiny", "/unused", ["evaluation.holdout_fraction=0.3", "evaluation.holdout_min_clips=0"])
    clips = _clips(200)
    clips.loc[0:9, "error"] = "decode failed"  # not scored: never an evaluation clip
    clips.loc[10:19, "end_frame"] = clips.loc[10:19, "start_frame"] + 2  # too short for a 4-frame stage
    chosen = choose(clips, cfg)
    pool = usable_pool(clips, cfg)
    assert len(pool) == 180 and chosen.pool == 180
    assert set(chosen.clip_ids) == {c for c in pool["clip_id"] if clip_hash(c) < 0.3}
    assert 30 < len(chosen) < 80 and list(chosen.clip_ids) == sorted(chosen.clip_ids)
    # Membership depends on the clip id only: a clip added to the pool changes no other clip's membership.
    added = _clips(230).tail(30)
    more = choose(pd.concat([clips, added], ignore_index=True), cfg)
    new = {c for c in added["clip_id"] if clip_hash(c) < 0.3}
    assert new and set(more.clip_ids) == set(chosen.clip_ids) | new and more.fingerprint != chosen.fingerprint
    # The same table gives the same set and fingerprint; the order of rows does not matter.
    assert choose(clips.sample(frac=1, random_state=1), cfg) == chosen
    assert choose(clips, cfg).fingerprint == chosen.fingerprint


def test_small_pool_takes_the_smallest_hashes_but_leaves_training_data():
    cfg = load_config("tiny", "/unused", ["evaluation.holdout_fraction=0.0", "evaluation.holdout_min_clips=4"])
    clips = _clips(6)
    chosen = choose(clips, cfg)
    ranked = sorted(clips["clip_id"], key=clip_hash)
    assert list(chosen.clip_ids) == sorted(ranked[:3])  # at most half the pool
    assert len(choose(_clips(20), cfg)) == 4
    assert len(choose(_clips(1), cfg)) == 0 and len(choose(_clips(0), cfg)) == 0


def test_protocol_fingerprint_changes_with_what_is_measured():
    cfg = load_config("tiny", "/unused")
    fp = {"eval_set": "abc", "dataset_version": "dv1", "shape": "96x96x4"}
    tag = protocol_fingerprint(fp, cfg, 3)
    assert tag == protocol_fingerprint({**fp, "dataset_version": "another variant"}, cfg, 3)
    assert tag != protocol_fingerprint({**fp, "eval_set": "other clips"}, cfg, 3)
    for change in ("seed=1", "evaluation.val_sigmas=[1.0]", "evaluation.motion_sweep=[0,255]"):
        assert tag != protocol_fingerprint(fp, load_config("tiny", "/unused", [change]), 3), change
    assert tag == protocol_fingerprint(fp, load_config("tiny", "/unused", ["evaluation.register_metric=fvd"]), 3)


def test_every_variant_is_evaluated_on_the_same_clips_and_trains_on_none(curated_copy):
    cfg = load_config("tiny", str(curated_copy))
    root = open_storage(str(curated_copy))
    clips = read_clips_table(root)
    chosen = choose(clips, cfg)
    assert len(chosen) >= 2
    stage = cfg.training.stages["3"]
    rows = {}
    for variant in ("svd", "uncurated"):
        built = build_latents(root, variant, cfg, progress=False)
        data = load_latents(root, variant, stage)
        train, held = data.split(val=False), data.split(val=True).materialize()
        rows[variant] = held
        assert held.index["clip_ids"] == list(chosen.clip_ids), variant  # the same clips, in the same order
        assert not set(train.clip_ids()) & set(chosen.clip_ids), variant  # never trained on
        kept = set(select(clips, variant, cfg.variants[variant]).kept["clip_id"])
        index = built[next(iter(built))]
        assert index["fingerprint"]["eval_set"] == chosen.fingerprint
        assert {c for c, why in index["skipped"].items() if why == HELD_OUT} == kept & set(chosen.clip_ids)
    # Same encoded inputs for both variants, including clips the svd filter removed.
    svd_kept = set(select(clips, "svd", cfg.variants["svd"]).kept["clip_id"])
    assert set(chosen.clip_ids) - svd_kept, "the corpus should hold an evaluation clip svd's filter removes"
    for name in ("latents", "z_cond_aug", "sigma_aug", "image_embeds", "fps", "motion_bucket"):
        assert torch.equal(rows["svd"].tensors[name], rows["uncurated"].tensors[name]), name
    marker = json.loads(root.read_text(f"eval_set/{chosen.fingerprint}/eval_set.json"))
    assert marker["clip_ids"] == list(chosen.clip_ids) and marker["shards"]
    with pytest.raises(FileNotFoundError):
        load_latents(root, "nothing", stage)
