"""The latent store: shards written as clips are encoded, a killed build resumed at the next shard, bf16 storage,
text context only where a stage reads it, and each rank reading only the shards its samples are in."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.data import IMAGE, TEXT_VIDEO, VIDEO, RankBatches, sample_indices, step_samples, video_batches
from training.latent_store import LatentStore, read_header, shard_key
from training.latents import build_latents, load_latents, prefix, shape_key
from training.synthetic import synthetic_latent_store

SHARD = 2
SETTINGS = [f"training.latent_store.shard_clips={SHARD}"]


class Killed(Exception):
    pass


def _store_state(root, variant, key) -> tuple[dict, dict]:
    store = LatentStore.open(root, prefix(variant, key))
    data = store.materialize()
    return data.tensors, data.index


def test_killed_build_resumes_at_the_next_shard_and_equals_an_uninterrupted_one(curated_copy, tmp_path):
    whole = tmp_path / "whole"
    shutil.copytree(curated_copy, whole)
    cfg = load_config("tiny", str(curated_copy), SETTINGS)
    root = open_storage(str(curated_copy))
    key = shape_key(cfg.training.stages["2"])
    base = prefix("uncurated", key)

    seen: list[int] = []

    def kill_after_two(k: str, shards: int) -> None:
        if k != key:
            return
        seen.append(shards)
        # Written as encoded: shard i exists when the callback for it runs, the next one does not yet.
        assert root.exists(shard_key(base, shards - 1)) and not root.exists(shard_key(base, shards))
        assert not root.exists(f"{base}/index.json")
        if shards == 2:
            raise Killed

    with pytest.raises(Killed):
        build_latents(root, "uncurated", cfg, progress=False, on_shard=kill_after_two)
    assert seen == [1, 2]
    header, meta, _ = read_header(root, shard_key(base, 0))
    assert len(json.loads(meta["clip_ids"])) == SHARD == header["latents"]["shape"][0]

    resumed: list[tuple[str, int]] = []
    built = build_latents(root, "uncurated", cfg, progress=False, on_shard=lambda k, n: resumed.append((k, n)))
    mine = [n for k, n in resumed if k == key]
    assert mine and mine[0] == 3, resumed  # shards 1 and 2 were not encoded again

    reference = build_latents(open_storage(str(whole)), "uncurated", cfg, progress=False)
    assert built == reference  # same shards, counts and skipped clips (every clip stored or listed)
    for k in built:
        (a, ia), (b, ib) = _store_state(root, "uncurated", k), _store_state(open_storage(str(whole)), "uncurated", k)
        assert ia["clip_ids"] == ib["clip_ids"] and ia["captions"] == ib["captions"]
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (k, name)
    index = built[key]
    assert index["shards"] == -(-index["clips"] // SHARD) > 2
    sizes = [read_header(root, shard_key(base, i))[0]["latents"]["shape"][0] for i in range(index["shards"])]
    assert sizes[:-1] == [SHARD] * (index["shards"] - 1) and sum(sizes) == index["clips"]


def test_big_fields_are_bf16_and_text_context_only_where_a_stage_reads_it(curated_copy):
    cfg = load_config("tiny", str(curated_copy), SETTINGS)
    root = open_storage(str(curated_copy))
    build_latents(root, "uncurated", cfg, progress=False)
    for n, stage in cfg.training.stages.items():
        base = prefix("uncurated", shape_key(stage))
        header = read_header(root, shard_key(base, 0))[0]
        for name in ("latents", "z_cond_aug", "image_embeds"):
            assert header[name]["dtype"] == "BF16", (n, name)
        for name in ("sigma_aug", "fps", "motion_bucket", "motion_score", "val"):
            assert header[name]["dtype"] == "F32", (n, name)
        text = n == "1" or stage.conditioning == "text"
        assert ("context" in header) == text, n
        assert root.exists(f"{base}/null_context.safetensors") == text, n
        if text:
            assert header["context"]["dtype"] == "BF16"
        # Readers get fp32 whatever is stored.
        assert load_latents(root, "uncurated", stage).rows([0], ["latents"])["latents"].dtype == torch.float32
    assert cfg.training.stages["3"].conditioning == "image"  # so the case without context is covered

    # Online conditioning augmentation keeps the first frame's pixels, only where an image stage trains.
    online = load_config("tiny", str(curated_copy), [*SETTINGS, "training.cond_aug_online=true"])
    build_latents(root, "uncurated", online, progress=False)
    for n, stage in online.training.stages.items():
        header = read_header(root, shard_key(prefix("uncurated", shape_key(stage)), 0))[0]
        assert ("cond_frame" in header) == (n == "3"), n
    frame = load_latents(root, "uncurated", online.training.stages["3"]).rows([0], ["cond_frame"])["cond_frame"]
    assert frame.shape == (1, 3, 96, 96) and float(frame.abs().max()) <= 1


@pytest.fixture
def store(tmp_path) -> LatentStore:
    root = open_storage(str(tmp_path))
    synthetic_latent_store(root, "latents/s/16x16x4", 40, 4, val_clips=6, height=8, width=8)
    return LatentStore.open(root, "latents/s/16x16x4")


def test_each_rank_reads_only_the_shards_of_its_samples(store):
    data = store.training()
    assert len(data) == 34
    batch, per_rank, seed, steps = 4, 2, 3, 6
    whole = video_batches(data.materialize(), batch, seed)
    for rank in range(2):
        mine = LatentStore(store.root_uri, store.base, store.index, 0, 34)
        batches = RankBatches(mine, VIDEO, batch, seed, rank, per_rank)
        for step in range(steps):
            got = batches(step)
            expected = whole(step)
            for k, v in got.items():
                assert torch.equal(v, expected[k][rank * per_rank:(rank + 1) * per_rank]), (rank, step, k)
        rows = torch.cat([sample_indices(34, batch, s, seed)[rank * per_rank:(rank + 1) * per_rank]
                          for s in range(steps)])
        assert set(mine.reads) == {shard_key(store.base, int(r) // 4) for r in rows}, rank
        assert sum(mine.reads.values()) == steps * per_rank  # one row read per sample, nothing else
        assert len(mine.reads) < store.index["shards"]


def test_workers_prefetch_in_step_order_and_a_restart_continues_the_stream(store):
    data = store.training()
    inline = RankBatches(data, TEXT_VIDEO, 4, 0, 1, 2)
    ahead = RankBatches(data, TEXT_VIDEO, 4, 0, 1, 2, num_workers=2, prefetch_factor=2, stop=9)
    try:
        for step in (0, 1, 2, 3, 7, 8):  # 7: a resumed run starts its stream there
            a, b = inline(step), ahead(step)
            assert a.keys() == b.keys() == {"latents", "context", "null_context", "fps", "motion_bucket"}
            assert all(torch.equal(a[k], b[k]) for k in a), step
    finally:
        ahead.close()


def test_evaluation_rows_come_from_the_store_tail(store):
    held = store.split(val=True).materialize()
    assert len(held) == 6 and held.index["clip_ids"] == [f"clip{i:07d}" for i in range(34, 40)]
    assert bool((held.tensors["val"] == 1).all())
    assert bool((store.split(val=False).materialize().tensors["val"] == 0).all())
    image = step_samples(store.training(), IMAGE, 5, 0, 0)
    assert image["latents"].shape == (5, 4, 8, 8) and image["null_context"].shape == (5, 77, 64)


def test_a_rank_draws_its_samples_noise_alone():
    from training.edm import LogNormalSigma
    from training.engine import draw_samples
    from training.objectives import VideoObjective
    from training.synthetic import synthetic_video_batches

    objective = VideoObjective(LogNormalSigma())
    batch = synthetic_video_batches(4, 0)(0)
    whole = draw_samples(objective, batch, 5, 2, 0)
    halves = [draw_samples(objective, {k: v[i:i + 2] for k, v in batch.items()}, 5, 2, i) for i in (0, 2)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([h[k] for h in halves])), k
    assert not torch.equal(whole["noise"], draw_samples(objective, batch, 5, 3, 0)["noise"])  # per step


def test_rows_are_read_by_range_from_s3(tmp_path, bucket):
    root = open_storage(f"s3://{bucket}/data")
    synthetic_latent_store(root, "latents/s/x", 10, 4, val_clips=2, height=8, width=8, context=False)
    local = open_storage(str(tmp_path))
    synthetic_latent_store(local, "latents/s/x", 10, 4, val_clips=2, height=8, width=8, context=False)
    s3, disk = LatentStore.open(root, "latents/s/x"), LatentStore.open(local, "latents/s/x")
    a, b = s3.rows([9, 0, 5], VIDEO.keys), disk.rows([9, 0, 5], VIDEO.keys)
    assert all(torch.equal(a[k], b[k]) for k in VIDEO.keys)
    assert "context" not in s3.fields and s3.clip_ids(range(3, 6)) == ["clip0000003", "clip0000004", "clip0000005"]
