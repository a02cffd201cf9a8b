"""Stage II base models are scored per variant from text prompts: validation loss at fixed sigmas and seeds, and
sample videos from the evaluation clips' captions, with a bf16 model (compute.dtype) fed the store's fp32 tensors."""

from __future__ import annotations

import pytest
import torch

from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training import model_store
from training.evaluate_base import evaluate_text_stage
from training.export import save_unet
from training.latent_store import write_rows
from training.models import build_video_unet

SETTINGS = ["training.stages.2.height=32", "training.stages.2.width=32", "training.stages.2.frames=3",
            "evaluation.sample_steps=2", "evaluation.max_videos=2", "evaluation.val_sigmas=[0.1, 1.0]"]


def _root_with_text_stage(tmp_path, weights_seed: int):
    root = open_storage(str(tmp_path / "data"))
    g = torch.Generator().manual_seed(0)
    n = 3
    tensors = {"latents": torch.randn(n, 3, 4, 8, 8, generator=g), "context": torch.randn(n, 5, 64, generator=g),
               "null_context": torch.zeros(1, 5, 64), "fps": torch.full((n,), 7.0),
               "motion_bucket": torch.tensor([0.0, 127.0, 255.0]), "val": torch.tensor([1.0, 1.0, 0.0])}
    write_rows(root, "latents/v/32x32x3", tensors, ["a", "b", "c"], ["a red ball", "waves", "a train"], 2, {})
    torch.manual_seed(weights_seed)
    save_unet(build_video_unet("tiny", conditioning="text"), tmp_path / f"unet{weights_seed}")
    model_store.put_dir(root, tmp_path / f"unet{weights_seed}", model_store.model_key("v", 2), {"stage": 2})
    return root


def test_text_stage_is_scored_from_captions_with_a_bf16_model(tmp_path):
    cfg = load_config("tiny", str(tmp_path / "data"), [*SETTINGS, "compute.dtype=bfloat16"])
    root = _root_with_text_stage(tmp_path, weights_seed=0)
    r = evaluate_text_stage(root, "v", cfg, out_dir=tmp_path / "out")
    m = r.metrics
    assert m["n_val_clips"] == 2 and m["n_videos"] == 2 == r.n_videos and not r.notes and r.held_out
    assert set(m) >= {"val_loss", "val_loss/sigma_0.1", "val_loss/sigma_1"}
    assert m["se/val_loss"] > 0 and m["n/val_loss"] == 2  # its standard error over the 2 evaluation clips
    assert r.stage == 2 and len(r.eval_set) == 16
    assert r.details["captions"] == ["a red ball", "waves"] and r.details["clip_ids"] == ["a", "b"]
    assert sorted(p.name for p in r.video_paths) == ["text_00.gif", "text_00.mp4", "text_01.gif", "text_01.mp4"]

    # Fixed sigmas and seeds: the same model scores the same, another model differently.
    cfg32 = load_config("tiny", str(tmp_path / "data"), [*SETTINGS, "evaluation.max_videos=1",
                                                          "evaluation.sample_steps=1"])
    again = evaluate_text_stage(root, "v", cfg32).metrics["val_loss"]
    assert evaluate_text_stage(root, "v", cfg32).metrics["val_loss"] == again
    other = _root_with_text_stage(tmp_path, weights_seed=1)
    assert evaluate_text_stage(other, "v", cfg32).metrics["val_loss"] != again
    # A model that trained on an evaluation clip is not held out.
    seen = evaluate_text_stage(root, "v", cfg32, trained_on={"b", "c"})
    assert not seen.held_out and any("trained on 1 evaluation clip" in n for n in seen.notes)


def test_image_stage_is_refused(tmp_path):
    cfg = load_config("tiny", str(tmp_path), ["training.stages.2.conditioning=image"])
    with pytest.raises(ValueError, match="not a text-conditioned"):
        evaluate_text_stage(open_storage(str(tmp_path)), "v", cfg)
