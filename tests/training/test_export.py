"""Diffusers export: the EDM scheduler matches our sampling math, and an exported tiny SVD pipeline loads with
plain diffusers, keeps the weights bit for bit and generates reproducible frames."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline, UNet2DConditionModel, UNetSpatioTemporalConditionModel

from training.edm import VPredictionPreconditioning, karras_sigmas
from training.encoders import build_feature_extractor, build_image_encoder, build_vae
from training.export import MANIFEST, edm_scheduler, export_svd_pipeline, load_svd_pipeline, save_unet
from training.models import build_image_unet, build_video_unet, count_parameters


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return {
        "unet": build_video_unet("tiny"),
        "vae": build_vae("tiny"),
        "image_encoder": build_image_encoder("tiny"),
        "feature_extractor": build_feature_extractor(),
    }


@pytest.fixture(scope="module")
def exported(parts, tmp_path_factory):
    return export_svd_pipeline(**parts, out_dir=tmp_path_factory.mktemp("export") / "svd")


def test_edm_scheduler_config_is_released_svd():
    c = edm_scheduler().config
    assert c.prediction_type == "v_prediction" and c.use_karras_sigmas
    assert (c.sigma_min, c.sigma_max) == (0.002, 700.0)
    assert (c.timestep_type, c.timestep_spacing, c.interpolation_type) == ("continuous", "leading", "linear")
    assert (c.steps_offset, c.num_train_timesteps, c.beta_schedule) == (1, 1000, "scaled_linear")
    assert (c.beta_start, c.beta_end) == (0.00085, 0.012)


@pytest.mark.parametrize("n", [1, 2, 7, 25])
def test_edm_scheduler_sigmas_and_timesteps_are_ours(n):
    s = edm_scheduler()
    s.set_timesteps(n)
    ours = karras_sigmas(n, 0.002, 700.0)
    torch.testing.assert_close(s.sigmas, ours, rtol=1e-6, atol=0)
    _, _, _, c_noise = VPredictionPreconditioning().scalings(ours[:-1])
    torch.testing.assert_close(s.timesteps, c_noise, rtol=1e-6, atol=1e-6)


def test_edm_scheduler_euler_steps_equal_our_denoiser():
    """The pipeline's loop (scale_model_input, F(., t), step) is Euler on
    D = c_skip x + c_out F(c_in x; c_noise)."""

    def F(x, c_noise):  # any fixed function of the network's inputs will do
        return torch.tanh(x) * 0.7 + 0.1 * c_noise

    n = 6
    s = edm_scheduler()
    s.set_timesteps(n)
    x0 = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x0 * s.init_noise_sigma
    for t in s.timesteps:
        x = s.step(F(s.scale_model_input(x, t), t), t, x).prev_sample

    pre, sigmas = VPredictionPreconditioning(), karras_sigmas(n, 0.002, 700.0, dtype=torch.float64)
    y = x0 * (1 + sigmas[0] ** 2).sqrt()  # init_noise_sigma for "leading" spacing
    for i in range(n):
        d = (y - pre.denoise(F, y, sigmas[i].reshape(1))) / sigmas[i]
        y = y + d * (sigmas[i + 1] - sigmas[i])
    torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4)


def test_export_layout_and_manifest(parts, exported):
    assert (exported / "model_index.json").is_file()
    for sub in ("unet", "vae", "image_encoder"):
        assert list((exported / sub).glob("*.safetensors")) and not list((exported / sub).glob("*.bin"))
    assert (exported / "feature_extractor" / "preprocessor_config.json").is_file()
    m = json.loads((exported / MANIFEST).read_text())
    assert m["parameters"] == {k: count_parameters(parts[k]) for k in ("unet", "vae", "image_encoder")}
    assert (
        m["vae"]["scale_factor"] == 4 and m["unet"]["num_frames"] == 3 and m["default_resolution"] == [64, 64]
    )
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_exported_weights_equal_source(parts, exported):
    assert _state_equal(UNetSpatioTemporalConditionModel.from_pretrained(exported / "unet"), parts["unet"])
    pipe = load_svd_pipeline(exported)
    for name in ("unet", "vae", "image_encoder"):
        assert _state_equal(getattr(pipe, name), parts[name]), name
    assert pipe.scheduler.config.sigma_max == 700.0 and pipe.scheduler.config.use_karras_sigmas
    half = load_svd_pipeline(exported, dtype=torch.bfloat16)
    assert {half.unet.dtype, half.vae.dtype, half.image_encoder.dtype} == {torch.bfloat16}


def test_exported_pipeline_generates_reproducibly(exported):
    pipe = StableVideoDiffusionPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))

    def run(seed: int) -> np.ndarray:
        return pipe(
            image,
            height=64,
            width=64,
            num_frames=3,
            num_inference_steps=2,
            decode_chunk_size=2,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).frames

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 3, 64, 64, 3) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_export_replaces_older_export(parts, tmp_path):
    out = tmp_path / "svd"
    export_svd_pipeline(**parts, out_dir=out, metadata={"run": "first"})
    newer = build_video_unet("tiny")
    assert not _state_equal(newer, parts["unet"])
    export_svd_pipeline(**{**parts, "unet": newer}, out_dir=out, metadata={"run": "second"})
    assert json.loads((out / MANIFEST).read_text())["metadata"] == {"run": "second"}
    assert _state_equal(UNetSpatioTemporalConditionModel.from_pretrained(out / "unet"), newer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svd"]


def test_export_rejects_mismatched_parts(parts, tmp_path):
    with pytest.raises(ValueError, match="cross_attention_dim"):
        export_svd_pipeline(
            **{**parts, "image_encoder": build_image_encoder("svd", device="meta")}, out_dir=tmp_path / "x"
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "builder,cls",
    [(build_image_unet, UNet2DConditionModel), (build_video_unet, UNetSpatioTemporalConditionModel)],
)
def test_save_unet_round_trip(builder, cls, tmp_path):
    unet = builder("tiny")
    out = save_unet(unet, tmp_path / "stage")
    assert list(out.glob("*.safetensors")) and (out / "config.json").is_file()
    assert _state_equal(cls.from_pretrained(out), unet)
