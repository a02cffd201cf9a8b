"""Clip latents: stored once per curated dataset and resolution, every clip accounted for, reruns free."""

import json

import pytest
import torch

from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.latents import build_latents, frame_window, load_latents, shape_key


@pytest.mark.parametrize("n,fps,frames,rate", [(100, 24, 4, 7), (10, 24, 4, 7), (4, 30, 4, 7), (50, 6, 14, 7)])
def test_frame_window_fits_the_clip_at_about_the_rate(n, fps, frames, rate):
    start, stride = frame_window(n, fps, frames, rate)
    assert stride >= 1 and start >= 0 and start + stride * (frames - 1) < n
    if n >= round(fps / rate) * frames:
        assert stride == max(1, round(fps / rate))


def test_latents_of_every_stage_resolution(curated_copy):
    cfg = load_config("tiny", str(curated_copy))
    root = open_storage(str(curated_copy))
    built = build_latents(root, "uncurated", cfg, progress=False)
    assert set(built) == {shape_key(s) for s in cfg.training.stages.values()}
    kept = json.loads(root.read_text("curated/uncurated/selection.json"))["clips_kept"]
    for key, index in built.items():
        # Every curated clip is stored or has a reason (an evaluation clip's: held out); evaluation rows come extra.
        assert index["clips"] - index["val_clips"] + len(index["skipped"]) == kept
    stage = cfg.training.stages["2"]
    data = load_latents(root, "uncurated", stage).materialize()
    t, n, k = data.tensors, len(data), cfg.training.cond_aug_samples
    f = 4  # the tiny autoencoder's downsampling
    assert t["latents"].shape == (n, stage.frames, 4, stage.height // f, stage.width // f)
    assert t["z_cond_aug"].shape == (n, k, 4, stage.height // f, stage.width // f)
    assert t["sigma_aug"].shape == (n, k) and bool((t["sigma_aug"] > 0).all())
    assert t["image_embeds"].shape[0] == n and t["context"].shape[:2] == (n, 77)
    assert bool((t["motion_bucket"] >= 0).all() and (t["motion_bucket"] <= 255).all())
    assert bool((t["fps"] > 0).all() and (t["fps"] <= 24).all())
    # Different noise augmentations of the same first frame encode differently.
    assert not torch.allclose(t["z_cond_aug"][:, 0], t["z_cond_aug"][:, 1])
    assert not torch.allclose(t["context"][0], t["null_context"][0])

    # A rerun computes nothing; a changed encoding setting recomputes.
    stamp = {k: root.size(k) for k in root.list("latents/uncurated")}
    mtimes = {p: p.stat().st_mtime_ns for p in (curated_copy / "latents/uncurated").rglob("*.safetensors")}
    assert build_latents(root, "uncurated", cfg, progress=False) == built
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes and stamp
    cfg2 = load_config("tiny", str(curated_copy), ["training.cond_aug_samples=3"])
    again = build_latents(root, "uncurated", cfg2, progress=False)
    assert load_latents(root, "uncurated", cfg2.training.stages["2"]).rows([0], ["sigma_aug"])["sigma_aug"].shape == (1, 3)
    assert again[shape_key(stage)]["fingerprint"] != built[shape_key(stage)]["fingerprint"]


def test_missing_curated_dataset_says_what_to_run(tmp_path):
    cfg = load_config("tiny", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="svdpipe curate"):
        build_latents(open_storage(str(tmp_path)), "svd", cfg, progress=False)
