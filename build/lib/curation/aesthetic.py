"""The LAION improved-aesthetic-predictor: a small MLP on L2-normalised CLIP image embeddings.

Shape and parameter names follow christophschuhmann/improved-aesthetic-predictor (``layers.0`` ... ``layers.7``),
so its released ViT-L/14 head (``sac+logos+ava1-l14-linearMSE.pth``) loads as it is. Weights always come from a
file: for a tiny CLIP a seeded random head is written once to a cache folder and then read like a real one, so
the tiny profile exercises the same loading code. Its scores mean nothing (its name says "tiny").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

LAION_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)


class AestheticHead(nn.Module):
    """Linear(d,1024)-Dropout-Linear(1024,128)-Dropout-Linear(128,64)-Dropout-Linear(64,16)-Linear(16,1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.layers(emb).squeeze(-1)


def load_head(path: str | Path, dim: int) -> AestheticHead:
    """Read a head for ``dim``-dimensional embeddings from a state-dict file (a LAION ``.pth``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"aesthetic head weights not found at {path}. Download the LAION predictor for your CLIP "
            f"(ViT-L/14: {LAION_HEAD_URL}) and set curation.clip.aesthetic_head to its path."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = AestheticHead(dim)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} is not an aesthetic head for {dim}-d CLIP embeddings: {e}") from e
    return head.eval().requires_grad_(False)


def tiny_head_path(cache_dir: str | Path, clip_name: str, dim: int, seed: int) -> Path:
    """Where the seeded random head for a tiny CLIP lives; the name says it is random and for which CLIP."""
    safe = clip_name.replace("/", "_").replace(":", "_")
    return Path(cache_dir).expanduser() / f"aesthetic-head-random-{safe}-d{dim}-seed{seed}.pth"


def ensure_tiny_head(path: Path, dim: int, seed: int) -> Path:
    """Write a seeded random head to ``path`` unless it is there; concurrent workers may race, so write-then-rename."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = AestheticHead(dim)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(head.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def score(head: AestheticHead, image_emb: np.ndarray) -> np.ndarray:
    """Per-frame aesthetic scores; embeddings are re-normalised because the LAION head was trained on unit ones."""
    emb = torch.as_tensor(np.asarray(image_emb, dtype=np.float32))
    if emb.ndim == 1:
        emb = emb[None]
    emb = nn.functional.normalize(emb, dim=-1)
    with torch.no_grad():
        return head(emb).numpy().astype(np.float32)
