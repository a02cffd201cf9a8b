import numpy as np
import pytest
import torch

from curation import aesthetic
from curation.clip_models import load_model
from curation.clip_scores import ClipScorer
from frame_helpers import random_frames
from svdpipe.config import load_config


from svdpipe.config_schema import ClipConfig
pytestmark = pytest.mark.usefixtures("one_torch_thread")

_frames = random_frames


@pytest.fixture
def cfg(tmp_path) -> ClipConfig:
    return ClipConfig(cache_dir=str(tmp_path / "cache"), batch_size=2)


def test_embeddings_are_normalised_deterministic_and_labelled_tiny(cfg):
    frames = _frames(0, n=5)  # more than batch_size: exercises batching
    a = ClipScorer(cfg, seed=0)
    emb = a.embed_images(frames)
    assert emb.shape == (5, a.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, ClipScorer(cfg, seed=0).embed_images(frames))
    text = a.embed_texts(["a dog on a beach", "a city at night"])
    assert text.shape == (2, a.dim)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert "tiny" in a.name and "tiny" in a.aesthetic_name
    assert a.name == "tiny-clip/random-seed0"
    other = ClipScorer(cfg, seed=1)
    assert not np.allclose(emb, other.embed_images(frames))


def test_identical_frames_have_similarity_one(cfg):
    frame = _frames(1, n=1)[0]
    emb = ClipScorer(cfg).embed_images([frame, frame.copy(), _frames(2, n=1)[0]])
    assert float(emb[0] @ emb[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(emb[0] @ emb[2]) < 0.9999


def test_text_similarity_is_mean_cosine_in_range(cfg):
    scorer = ClipScorer(cfg)
    emb = scorer.embed_images(_frames(3))
    for text in ["a red car", "", "words " * 200]:  # the last is longer than CLIP's context
        sim = scorer.text_similarity(emb, text)
        assert -1.0 <= sim <= 1.0
        assert sim == pytest.approx(float(np.mean(emb @ scorer.embed_texts([text])[0])), abs=1e-6)
    scores = scorer.scores(_frames(3), "a red car")
    assert set(scores) == {"aesthetic_score", "clip_text_similarity", "clip_model", "aesthetic_model"}


def test_tiny_aesthetic_head_is_written_once_and_read_from_its_file(cfg, tmp_path):
    frames = _frames(4)
    scorer = ClipScorer(cfg)
    files = list((tmp_path / "cache").glob("aesthetic-head-*.pth"))
    assert len(files) == 1 and "tiny-clip" in files[0].name
    emb = scorer.embed_images(frames)
    before = scorer.aesthetic(emb)
    assert np.isfinite(before)
    assert ClipScorer(cfg).aesthetic(emb) == before  # same file, same score

    # The score follows the file: rewrite the last layer's bias and build a new scorer.
    state = torch.load(files[0], weights_only=True)
    state["layers.7.bias"] += 1.5
    torch.save(state, files[0])
    assert ClipScorer(cfg).aesthetic(emb) == pytest.approx(before + 1.5, abs=1e-5)

    # An explicit head file is used as is, also for a tiny CLIP.
    explicit = tmp_path / "head.pth"
    head = aesthetic.AestheticHead(scorer.dim)
    torch.nn.init.zeros_(head.layers[7].weight), torch.nn.init.constant_(head.layers[7].bias, 7.0)
    torch.save(head.state_dict(), explicit)
    scorer = ClipScorer(cfg.model_copy(update={"aesthetic_head": str(explicit)}))
    assert scorer.aesthetic(emb) == pytest.approx(7.0)
    assert scorer.aesthetic_name == "head"


def test_head_for_other_embedding_width_is_refused(cfg, tmp_path):
    path = tmp_path / "l14.pth"
    torch.save(aesthetic.AestheticHead(768).state_dict(), path)  # the LAION ViT-L/14 head's shape
    with pytest.raises(ValueError, match="768"):
        ClipScorer(cfg.model_copy(update={"aesthetic_head": str(path)}))


def test_real_clip_without_head_file_says_what_to_do(tmp_path):
    svd = load_config("svd", environ={}).curation.clip
    assert (svd.model, svd.pretrained) == ("ViT-L-14-quickgelu", "openai")
    missing = svd.model_copy(update={"aesthetic_head": str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")})
    with pytest.raises(FileNotFoundError, match="improved-aesthetic-predictor.*aesthetic_head|aesthetic_head.*predictor"):
        ClipScorer(missing)
    with pytest.raises(ValueError, match="aesthetic_head is not set.*Download"):
        ClipScorer(svd.model_copy(update={"aesthetic_head": None}))


def test_clip_weights_round_trip_through_a_local_file(cfg, tmp_path):
    source = load_model("tiny-clip", None, seed=5)
    path = tmp_path / "tiny-clip-seed5.pt"
    torch.save(source.model.state_dict(), path)

    # seed=0 would give other random weights: equal outputs prove the file's weights were loaded.
    scorer = ClipScorer(cfg.model_copy(update={"pretrained": str(path)}), seed=0)
    assert scorer.name == "tiny-clip/file:tiny-clip-seed5.pt"
    loaded = scorer._clip.model.state_dict()
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    frames = _frames(6)
    np.testing.assert_array_equal(scorer.embed_images(frames), ClipScorer(cfg, seed=5).embed_images(frames))

