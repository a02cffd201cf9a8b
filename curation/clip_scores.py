"""CLIP scores of a clip: the LAION-style aesthetic score and the CLIP similarity between frames and caption.

The paper (SVD, Blattmann et al. 2023, Sec. 3 and App. D) embeds the first, middle and last frame of each clip
with CLIP, scores aesthetics with a LAION predictor on those embeddings and measures how well the frames match the
caption by cosine similarity; both are averaged over the frames here. Filtering on them happens later (variants).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from curation import aesthetic
from curation.clip_models import is_tiny, load_model
from svdpipe.config_schema import ClipConfig


class ClipScorer:
    """open_clip image/text embeddings and the aesthetic head of one configured CLIP."""

    def __init__(self, cfg: ClipConfig, seed: int = 0, device: str = "cpu", dtype: str = "float32"):
        self.cfg = cfg
        _check_head_configured(cfg)  # before loading (maybe downloading) a large CLIP that could not be used
        self._clip = load_model(cfg.model, cfg.pretrained, seed=seed, device=device, dtype=dtype)
        self.name = self._clip.name
        # The embedding width differs between model classes' attributes; one empty text tells it for all.
        self.dim = int(self.embed_texts([""]).shape[1])
        if cfg.aesthetic_head is not None:
            head_path = Path(cfg.aesthetic_head).expanduser()
        else:
            head_path = aesthetic.ensure_tiny_head(
                aesthetic.tiny_head_path(cfg.cache_dir, self.name, self.dim, seed), self.dim, seed
            )
        self._head = aesthetic.load_head(head_path, self.dim)
        self.aesthetic_name = head_path.stem

    @torch.inference_mode()
    def embed_images(self, frames: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 HxWx3 frames -> (n, d) float32 unit vectors, ``cfg.batch_size`` frames per forward pass."""
        out = []
        for i in range(0, len(frames), self.cfg.batch_size):
            batch = self._clip.images_to_tensor(frames[i : i + self.cfg.batch_size])
            out.append(self._clip.model.encode_image(batch, normalize=True).float().cpu())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32 unit vectors of the texts (truncated to the model's context by its tokenizer)."""
        out = []
        for i in range(0, len(texts), self.cfg.batch_size):
            tokens = self._clip.tokenizer(list(texts[i : i + self.cfg.batch_size])).to(self._clip.device)
            out.append(self._clip.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def aesthetic(self, image_emb: np.ndarray) -> float:
        """Mean aesthetic-head score over the frames' embeddings."""
        return float(np.mean(aesthetic.score(self._head, image_emb)))

    def text_similarity(self, image_emb: np.ndarray, text: str) -> float:
        """Mean cosine similarity of the frames' embeddings to the text's, in [-1, 1]."""
        img = _unit(np.asarray(image_emb, np.float32).reshape(-1, self.dim))
        txt = self.embed_texts([text])[0]
        # Unit vectors can give |cos| a hair above 1 in float32; the contract is [-1, 1].
        return float(np.clip(np.mean(img @ txt), -1.0, 1.0))

    def clip_scores(self, clips: list[list[np.ndarray]], captions: list[str]) -> list[tuple[float, float]]:
        """(aesthetic score, text similarity) of many clips from all their frames and captions in batched passes.

        Per clip the same means as ``aesthetic`` and ``text_similarity``; the networks see frames and captions of
        every clip together, ``cfg.batch_size`` at a time.
        """
        return [(a, s) for a, s, _ in self.clip_looks(clips, captions)]

    def clip_looks(self, clips: list[list[np.ndarray]], captions: list[str]
                   ) -> list[tuple[float, float, np.ndarray]]:
        """``clip_scores`` plus each clip's image embedding: the unit mean of its frames' unit embeddings (what
        near-duplicate removal compares)."""
        emb = self.embed_images([f for frames in clips for f in frames])
        per_frame = aesthetic.score(self._head, emb)
        txt = self.embed_texts(captions)
        out, start = [], 0
        for frames, t in zip(clips, txt):
            e, a = emb[start : start + len(frames)], per_frame[start : start + len(frames)]
            start += len(frames)
            # Unit vectors can give |cos| a hair above 1 in float32; the contract is [-1, 1].
            mean = _unit(_unit(e).mean(axis=0, keepdims=True))[0]
            out.append((float(np.mean(a)), float(np.clip(np.mean(_unit(e) @ t), -1.0, 1.0)), mean))
        return out

    def scores(self, frames: list[np.ndarray], caption: str) -> dict[str, float | str]:
        """The clips-table fields from a clip's sampled frames (first, middle, last) and its caption."""
        emb = self.embed_images(frames)
        return {
            "aesthetic_score": self.aesthetic(emb),
            "clip_text_similarity": self.text_similarity(emb, caption),
            "clip_model": self.name,
            "aesthetic_model": self.aesthetic_name,
        }


def _unit(emb: np.ndarray) -> np.ndarray:
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _check_head_configured(cfg: ClipConfig) -> None:
    if cfg.aesthetic_head is not None:
        if not Path(cfg.aesthetic_head).expanduser().is_file():
            raise FileNotFoundError(
                f"curation.clip.aesthetic_head {cfg.aesthetic_head!r} does not exist. Download the LAION predictor "
                f"for {cfg.model} ({aesthetic.LAION_HEAD_URL} for ViT-L/14) to that path, or point the setting at it."
            )
    elif not is_tiny(cfg.model):
        raise ValueError(
            f"curation.clip.aesthetic_head is not set for {cfg.model!r}: a real CLIP needs a trained aesthetic head. "
            f"Download the LAION predictor ({aesthetic.LAION_HEAD_URL} for ViT-L/14) and set "
            "curation.clip.aesthetic_head to the file's path."
        )
