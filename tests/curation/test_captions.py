import huggingface_hub.constants
import pytest
import torch

from curation import clip_models
from curation.captions import Captioner, CocaCaptioner, build_captioners, caption_clip
from frame_helpers import random_frames
from svdpipe.config import load_config

# Short captions keep the tests quick; the defaults are exercised by the first test.
from svdpipe.config_schema import CaptionConfig
SHORT = CaptionConfig(max_tokens=10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

_frames = random_frames


def test_tiny_coca_captions_are_clean_nonempty_and_deterministic():
    frames = _frames(0)
    captioners = build_captioners(CaptionConfig(), seed=0)
    assert set(captioners) == {"coca"}
    coca = captioners["coca"]
    assert isinstance(coca, Captioner)
    assert coca.name == "tiny-coca/random-seed0"
    caption = coca.caption(frames)
    assert isinstance(caption, str) and caption.strip() == caption and caption
    assert "<start_of_text>" not in caption and "<end_of_text>" not in caption
    assert coca.caption(frames) == caption

    # A fresh build from the same seed (not the per-process cache) gives the same model, hence the same caption.
    clip_models._load_model_cached.cache_clear()
    assert CocaCaptioner(CaptionConfig(), seed=0).caption(frames) == caption


def test_decoder_step_matches_cocas_forward():
    coca = CocaCaptioner(SHORT, seed=2)
    model = coca._coca.model
    image = coca._coca.images_to_tensor([_frames(2)[1]])
    seqs = torch.tensor([[coca._sot, 320, 1929, 530], [coca._sot, 539, 8, 4000]])
    with torch.inference_mode():
        enc = model(image)
        full = model(image, seqs, image_latent=enc["image_features"].expand(2, -1),
                     image_embs=enc["image_embs"].expand(2, -1, -1), output_labels=False)["logits"][:, -1]
        ours = coca._next_logits(seqs, enc["image_embs"].expand(2, -1, -1))
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    # A random decoder must be initialised (open_clip leaves its output projection as torch.empty).
    assert float(ours.std()) > 0.1


def test_models_load_once_per_process():
    a = CocaCaptioner(CaptionConfig(), seed=0)
    b = CocaCaptioner(SHORT.model_copy(update={"num_beams": 1}), seed=0)
    assert a._coca.model is b._coca.model


def test_caption_comes_from_the_middle_frame():
    first, middle, last = _frames(1)
    coca = CocaCaptioner(SHORT, seed=0)
    assert coca.caption([first, middle, last]) == coca.caption([middle])
    other_first, _, other_last = _frames(2)
    assert coca.caption([other_first, middle, other_last]) == coca.caption([first, middle, last])
    with pytest.raises(ValueError):
        coca.caption([])


@pytest.mark.parametrize("beams", [1, 3])
def test_a_batch_of_clips_gets_the_captions_each_gets_alone(beams):
    """Batched beam search (many clips per decode, images leaving as they finish) is each clip's own search."""
    coca = CocaCaptioner(SHORT.model_copy(update={"num_beams": beams, "batch_size": 3}), seed=0)
    clips = [[f] for seed in (1, 2, 3, 4) for f in _frames(seed)]  # 12 clips: four batches of three
    batched = coca.captions(clips)
    assert batched == [coca.caption(c) for c in clips]
    assert len(set(batched)) > 1  # different images, different captions: the comparison is not vacuous


@pytest.mark.parametrize("beams", [1, 4])
def test_caption_length_limits_hold(beams):
    image = CocaCaptioner(SHORT, seed=3)._coca.images_to_tensor([_frames(3)[1]])
    exact = CocaCaptioner(CaptionConfig(min_tokens=6, max_tokens=6, num_beams=beams), seed=3)
    ids = exact._decode(image)[0]
    assert len(ids) == 6
    assert not {exact._sot, exact._eot, exact._pad} & set(ids)
    loose = CocaCaptioner(CaptionConfig(min_tokens=2, max_tokens=9, num_beams=beams), seed=3)
    assert 2 <= len(loose._decode(image)[0]) <= 9
    with pytest.raises(ValueError, match="min_tokens"):
        CocaCaptioner(CaptionConfig(min_tokens=10, max_tokens=5))


def test_coca_weights_round_trip_through_a_local_file(tmp_path):
    source = clip_models.load_model("tiny-coca", None, seed=7)
    path = tmp_path / "coca.pt"
    torch.save(source.model.state_dict(), path)
    frames = _frames(4)
    from_file = CocaCaptioner(SHORT.model_copy(update={"pretrained": str(path)}), seed=0)
    assert from_file.name == "tiny-coca/file:coca.pt"
    assert from_file.caption(frames) == CocaCaptioner(SHORT, seed=7).caption(frames)
    assert from_file.caption(frames) != CocaCaptioner(SHORT, seed=0).caption(frames)


class _JoiningSummariser:
    """A plug-in for the test of the interface, not a model: it joins the captions it is given."""

    name = "join"

    def summarise(self, captions):
        return " / ".join(captions[k] for k in sorted(captions))


def test_caption_clip_runs_captioners_then_the_summariser():
    frames = _frames(5)
    captioners = build_captioners(SHORT, seed=0)
    plain = caption_clip(frames, captioners)
    assert plain == {"coca": captioners["coca"].caption(frames)}
    summarised = caption_clip(frames, captioners, _JoiningSummariser())
    assert summarised == {**plain, "summary": plain["coca"]}


def test_svd_profile_loads_coca_through_open_clips_pretrained_tag(monkeypatch):
    cfg = load_config("svd", environ={}).curation.caption
    assert (cfg.model, cfg.pretrained) == ("coca_ViT-L-14", "mscoco_finetuned_laion2b_s13b_b90k")
    # Offline, open_clip's real tag path resolves the tag to its Hugging Face repo and fails at the download;
    # the flag only skips the network retries. A machine that has the weights cached loads them instead.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        coca = CocaCaptioner(cfg)
    except RuntimeError as e:
        assert "laion/mscoco_finetuned_CoCa-ViT-L-14" in str(e)
        assert "set `pretrained` to a local weights file" in str(e)
    else:
        assert coca.name == "coca_ViT-L-14/mscoco_finetuned_laion2b_s13b_b90k"
