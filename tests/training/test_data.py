"""Training batches: deterministic in (seed, step), every sample once per epoch, shapes of each stage."""

import torch

from training.data import image_batches, sample_indices, video_batches
from training.latents import LatentSet


def test_each_sample_once_per_epoch_and_deterministic():
    n, b = 7, 3
    stream = torch.cat([sample_indices(n, b, step, seed=5) for step in range(7)])  # 21 = 3 epochs
    for epoch in range(3):
        assert sorted(stream[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert torch.equal(stream, torch.cat([sample_indices(n, b, s, seed=5) for s in range(7)]))
    assert not torch.equal(stream, torch.cat([sample_indices(n, b, s, seed=6) for s in range(7)]))


def _latents(n=5, frames=4):
    g = torch.Generator().manual_seed(0)
    return LatentSet({
        "latents": torch.randn(n, frames, 4, 8, 8, generator=g),
        "z_cond_aug": torch.randn(n, 2, 4, 8, 8, generator=g),
        "sigma_aug": torch.rand(n, 2, generator=g),
        "image_embeds": torch.randn(n, 64, generator=g),
        "context": torch.randn(n, 77, 64, generator=g),
        "null_context": torch.zeros(1, 77, 64),
        "fps": torch.full((n,), 7.0),
        "motion_bucket": torch.arange(n).float(),
        "val": torch.tensor([0.0, 1, 0, 0, 0])[:n],
    }, {"clip_ids": [f"c{i}" for i in range(n)]})


def test_video_and_image_batch_shapes():
    data = _latents()
    v = video_batches(data, 3, seed=0)(0)
    assert v["latents"].shape == (3, 4, 4, 8, 8) and v["z_cond_aug"].shape == (3, 2, 4, 8, 8)
    assert v["image_embeds"].shape == (3, 64) and v["fps"].shape == (3,)
    i = image_batches(data, 6, seed=0)(1)
    assert i["latents"].shape == (6, 4, 8, 8) and i["context"].shape == (6, 77, 64)
    assert i["null_context"].shape == (6, 77, 64)
    # Stage I draws single frames of the clip windows: every one of them is a stored frame.
    frames = data.tensors["latents"].flatten(0, 1)
    assert all(any(torch.equal(x, f) for f in frames) for x in i["latents"])


def test_split_keeps_held_out_clips_apart():
    data = _latents()
    train, val = data.split(val=False), data.split(val=True)
    assert len(train) == 4 and len(val) == 1 and val.index["clip_ids"] == ["c1"]
    assert train.tensors["null_context"].shape == (1, 77, 64)
