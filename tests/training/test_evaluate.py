"""training.evaluate on a tiny random stage-2/3 model and synthetic evaluation latents in a local data root."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from svdpipe.config_schema import EvaluationConfig, MlflowConfig, StageConfig, SvdpipeConfig, TrainingConfig
from svdpipe.storage import LocalStorage
from training import model_store
from training.encoders import build_feature_extractor, build_image_encoder, build_vae
from training.latent_store import write_rows
from training.evaluate import (
    EvalResult,
    evaluate,
    load_eval_data,
    load_stage_model,
    log_evaluation,
    metric_key,
    validation_metrics,
)
from training.export import export_svd_pipeline, save_unet
from training.latents import shape_key
from training.models import build_video_unet

STAGE = StageConfig(height=32, width=32, frames=4)


def make_cfg(tmp_path, **eval_kw) -> SvdpipeConfig:
    return SvdpipeConfig(
        data_root=str(tmp_path / "data"),
        mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="eval-test"),
        training=TrainingConfig(stages={"1": StageConfig(), "2": STAGE, "3": STAGE}),
        evaluation=EvaluationConfig(sample_steps=2, max_videos=3, val_sigmas=(0.1, 1.0, 20.0), motion_sweep=(0, 255),
                                    motion_sweep_clips=2, **eval_kw),
    )


def write_latents(root: LocalStorage, variant: str, n: int, val: list[int], seed: int = 0) -> None:
    """A latent store in training.latents' layout (shards, evaluation rows last, index.json written last)."""
    g = torch.Generator().manual_seed(seed)
    h = STAGE.height // 4  # the tiny autoencoder downsamples 4x
    tensors = {
        "latents": torch.randn(n, STAGE.frames, 4, h, h, generator=g) * 0.5,
        "z_cond_aug": torch.randn(n, 2, 4, h, h, generator=g),
        "sigma_aug": torch.full((n, 2), 0.05),
        "image_embeds": torch.randn(n, 64, generator=g),
        "context": torch.randn(n, 77, 64, generator=g),
        "null_context": torch.zeros(1, 77, 64),
        "fps": torch.full((n,), 6.0),
        "motion_score": torch.rand(n, generator=g) * 4,
        "motion_bucket": torch.randint(0, 256, (n,), generator=g).float(),
        "val": torch.tensor([float(i in val) for i in range(n)]),
    }
    ids = [f"clip{i:03d}" for i in range(n)]
    write_rows(root, f"latents/{variant}/{shape_key(STAGE)}", tensors, ids, [f"caption {i}" for i in ids], 4,
               {"fingerprint": {"dataset_version": f"dv-{variant}", "eval_set": "clips-a"}})


def write_models(root: LocalStorage, variant: str, tmp_path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    unet, vae = build_video_unet("tiny"), build_vae("tiny")
    enc, fe = build_image_encoder("tiny"), build_feature_extractor()
    info = {"run_id": f"run-{variant}", "dataset_version": f"dv-{variant}", "variant": variant, "final_loss": 1.0}
    pipe_dir = export_svd_pipeline(unet, vae, enc, fe, tmp_path / f"export-{variant}")
    model_store.put_dir(root, pipe_dir, model_store.model_key(variant, 3), {**info, "stage": 3, "steps": 1})
    unet_dir = save_unet(unet, tmp_path / f"unet-{variant}")
    model_store.put_dir(root, unet_dir, model_store.model_key(variant, 2), {**info, "stage": 2, "steps": 1})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cfg = make_cfg(tmp)
    root = LocalStorage(cfg.data_root)
    write_models(root, "svd", tmp)
    write_latents(root, "svd", n=6, val=[1, 3, 4, 5])
    write_latents(root, "allval0", n=3, val=[])
    write_latents(root, "one", n=4, val=[2])
    return cfg, root, tmp


@pytest.fixture(scope="module")
def result(setup) -> EvalResult:
    cfg, root, tmp = setup
    return evaluate(root, "svd", cfg, stage=3, progress=False, out_dir=tmp / "videos", device="cpu")


def test_metrics_are_finite_and_named_safely(result):
    m = result.metrics
    assert result.held_out and result.n_videos == 3 and m["n_videos"] == 3 and m["n_val_clips"] == 4
    for s in ("0.1", "1", "20"):
        assert math.isfinite(m[f"val_loss/sigma_{s}"]) and m[f"val_loss/sigma_{s}"] > 0
    assert m["val_loss"] == pytest.approx(sum(m[f"val_loss/sigma_{s}"] for s in ("0.1", "1", "20")) / 3)
    assert m["se/val_loss"] > 0 and m["n/val_loss"] == 4  # standard error over the 4 evaluation clips
    fd = [k for k in m if k.startswith("fd_clip-")]
    assert len(fd) == 1 and math.isfinite(m[fd[0]]) and m[fd[0]] >= 0 and m[f"n/{fd[0]}"] == 3
    assert -1 <= m["temporal_consistency"] <= 1 and m["n/temporal_consistency"] == 3
    # Measured between consecutive generated frames: 4-frame videos give a number (curation's 2 fps gave NaN).
    assert math.isfinite(m["motion_fidelity"]) and -1 <= m["motion_fidelity"] <= 1 and m["n/motion_fidelity"] >= 1
    assert math.isfinite(m["motion_magnitude"]) and math.isfinite(m["motion_magnitude_real"])
    assert all(k == metric_key(k) for k in m)
    # Each reference video asks for its clip's own bucket; the sweep asks each of the first 2 clips for 0 and 255.
    t = result.details
    assert t["clip_ids"] == ["clip001", "clip003", "clip004"] and len(t["requested_buckets"]) == 3
    assert len(t["sweep_motion"]) == 2 and all(len(row) == 2 for row in t["sweep_motion"])
    assert t["eval_clip_ids"] == ["clip001", "clip003", "clip004", "clip005"] and t["eval_clips"] == "clips-a"
    assert len(result.eval_set) == 16


def test_videos_written(result):
    names = sorted(p.name for p in result.video_paths)
    assert len(names) == 12 + 8 and all(p.stat().st_size > 0 for p in result.video_paths)
    assert "real_02.gif" in names and "sweep_01_bucket255.mp4" in names and "sweep_00_bucket000.gif" in names
    assert sum(n.startswith("gen_00_bucket") for n in names) == 2


def test_validation_loss_is_deterministic_and_stage2_uses_its_unet(setup, result):
    cfg, root, _ = setup
    unet, _, info = load_stage_model(root, "svd", cfg, 2)
    data = load_eval_data(root, "svd", cfg.training.stages["2"]).data
    again = validation_metrics(unet, data, cfg, "cpu")
    # Same UNet weights, same latents, fixed seeds: stage 2's validation loss reproduces stage 3's evaluation.
    assert again["val_loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-5)
    assert again["se/val_loss"] == pytest.approx(result.metrics["se/val_loss"], rel=1e-4)
    assert info["stage"] == 2


def test_no_evaluation_clip_is_an_error_not_a_fallback(setup):
    cfg, root, tmp = setup
    model_store.put_dir(root, model_store.get_dir(root, "models/svd/stage3"), "models/allval0/stage3", {"stage": 3})
    with pytest.raises(ValueError, match="no evaluation clip"):
        evaluate(root, "allval0", cfg, progress=False, out_dir=tmp / "v3", device="cpu")


def test_evaluation_on_training_clips_is_not_held_out(setup):
    cfg, root, _ = setup
    stage = cfg.training.stages["3"]
    assert load_eval_data(root, "svd", stage, trained_on={"clip000", "clip002"}).held_out  # no evaluation clip
    loaded = load_eval_data(root, "svd", stage, trained_on={"clip000", "clip003"})
    assert not loaded.held_out and any("trained on 1 evaluation clip" in n and "clip003" in n for n in loaded.notes)
    write_latents(root, "every", n=3, val=[0, 1, 2])  # no training row: training.run trains on all of them
    loaded = load_eval_data(root, "every", stage)
    assert not loaded.held_out and any("trained on them" in n for n in loaded.notes)


def test_single_video_reports_nan_with_reason(setup):
    cfg, root, tmp = setup
    model_store.put_dir(root, model_store.get_dir(root, "models/svd/stage3"), "models/one/stage3", {"stage": 3})
    r = evaluate(root, "one", cfg, progress=False, out_dir=tmp / "v4", device="cpu")
    fd = next(k for k in r.metrics if k.startswith("fd_"))
    assert r.n_videos == 1 and math.isnan(r.metrics[fd]) and any(">= 2 videos" in n for n in r.notes)
    # One conditioning frame still gives a motion fidelity: its bucket sweep.
    assert math.isfinite(r.metrics["motion_fidelity"]) and r.metrics["n/motion_fidelity"] == 1
    assert math.isfinite(r.metrics["val_loss"])


def test_log_evaluation_writes_one_tagged_run(setup, result):
    cfg, _, _ = setup
    run_id = log_evaluation(result, cfg, "svd", "dv-svd", "run-svd", {"model_hash": "abc"})
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(run_id)
    t = run.data.tags
    assert (t["stage"], t["curation_variant"], t["dataset_version"]) == ("eval", "svd", "dv-svd")
    assert (t["evaluated_stage"], t["model_run_id"], t["model_hash"]) == ("3", "run-svd", "abc")
    assert (t["eval_set"], t["eval_clips"], t["held_out"]) == (result.eval_set, "clips-a", "true")
    assert run.data.params["evaluation.sample_steps"] == "2"
    assert run.data.metrics["val_loss"] == pytest.approx(result.metrics["val_loss"])
    arts = {a.path for a in mlflow.MlflowClient(cfg.mlflow.tracking_uri).list_artifacts(run_id, "samples")}
    assert "samples/sweep_00_bucket000.mp4" in arts and len(arts) == 20
    back = EvalResult.from_json(mlflow.artifacts.load_text(f"runs:/{run_id}/metrics.json"))
    assert back.metrics["val_loss"] == pytest.approx(result.metrics["val_loss"]) and back.eval_set == result.eval_set
    assert back.held_out and back.details["eval_clip_ids"] == result.details["eval_clip_ids"]


def test_an_unchanged_model_is_not_evaluated_again(setup, result):
    from svdpipe.dvc_hash import dvc_hashes
    from training.evaluation_run import evaluate_variant, find_evaluation

    cfg, root, _ = setup
    model_hash = dvc_hashes(root, {"m": "models/svd/stage3"})["m"]
    run_id = log_evaluation(result, cfg, "svd", "dv-svd", "run-svd", {"model_hash": model_hash})
    again = evaluate_variant(root, "svd", cfg, progress=False, log=lambda _: None)
    assert again.reused and again.run_id == run_id and again.dvc["model"] == model_hash
    assert again.result.metrics["val_loss"] == pytest.approx(result.metrics["val_loss"])
    assert again.result.eval_set == result.eval_set and again.result.held_out
    # Another model or another test is a new evaluation.
    assert find_evaluation(cfg, "svd", 3, "another-model", result.eval_set) is None
    assert find_evaluation(cfg, "svd", 3, model_hash, "another-test") is None
    with pytest.raises(FileNotFoundError, match="svdpipe train --variant nothing"):
        evaluate_variant(root, "nothing", cfg, progress=False)
