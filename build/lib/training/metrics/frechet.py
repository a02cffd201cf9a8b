"""Fréchet distance between feature distributions of real and generated videos, with a pluggable extractor.

Fréchet (2-Wasserstein) distance of Gaussian fits N(mu_r, S_r), N(mu_g, S_g) of the two feature sets
(Heusel et al. 2017, "GANs trained by a two time-scale update rule", Eq. 6; Dowson & Landau 1982):

    d^2 = ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r^{1/2} S_g S_r^{1/2})^{1/2}).

tr((S_r S_g)^{1/2}) is computed as the trace of the symmetric PSD root of S_r^{1/2} S_g S_r^{1/2} through
eigendecompositions, which is real and stable where ``sqrtm(S_r @ S_g)`` can turn complex.

With features from the Kinetics-400 I3D network this is FVD (Unterthiner et al. 2018, "Towards accurate generative
models of video"), the metric SVD reports on UCF-101. Only then is the metric called "fvd"; with any other
extractor its name is ``fd_<extractor name>``, so a number from a stand-in network is never passed off as FVD.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from training.metrics.temporal_consistency import ClipFrameEmbedder
from training.video_io import to_uint8_frames

__all__ = [
    "ClipVideoExtractor",
    "FeatureExtractor",
    "I3DExtractor",
    "extract_features",
    "frechet_distance",
    "frechet_video_distance",
    "gaussian_stats",
    "metric_name",
]


class FeatureExtractor(Protocol):
    """``name`` identifies network and weights; ``videos`` (N, F, 3, H, W) in [0, 1] -> (N, D) features."""

    name: str

    def __call__(self, videos: Tensor) -> Tensor | np.ndarray: ...


def metric_name(extractor: FeatureExtractor) -> str:
    return "fvd" if extractor.name == "i3d" else f"fd_{extractor.name}"


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((S + S.T) / 2)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (module docstring); >= 0 up to rounding."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    r1 = _psd_sqrt(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    d2 = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(d2, 0.0)


def extract_features(
    videos: Tensor | Iterable[Tensor], extractor: FeatureExtractor, batch_size: int = 8
) -> np.ndarray:
    """(N, D) features of a (N, F, 3, H, W) tensor of videos, or of an iterable of such batches."""
    batches = (
        (videos[i : i + batch_size] for i in range(0, len(videos), batch_size))
        if torch.is_tensor(videos)
        else videos
    )
    with torch.no_grad():
        out = [np.asarray(torch.as_tensor(extractor(b)).detach().cpu().double()) for b in batches]
    if not out:
        raise ValueError("no videos")
    return np.concatenate(out)


def frechet_video_distance(real, fake, extractor: FeatureExtractor, batch_size: int = 8) -> tuple[str, float]:
    """(metric name, Fréchet distance) between real and generated videos in the extractor's feature space."""
    mu_r, s_r = gaussian_stats(extract_features(real, extractor, batch_size))
    mu_g, s_g = gaussian_stats(extract_features(fake, extractor, batch_size))
    return metric_name(extractor), frechet_distance(mu_r, s_r, mu_g, s_g)


class I3DExtractor:
    """Kinetics-400 I3D logits (400-d, before softmax), the features FVD is defined on.

    Loads the TorchScript port of the TF-Hub ``i3d-kinetics-400`` model used by StyleGAN-V and later FVD code
    (``i3d_torchscript.pt``), which takes (N, 3, T, H, W) in [-1, 1] with keyword flags. Preprocessing follows
    that code: bilinear resize of the short side to 224, centre crop 224 x 224. Weights are never downloaded.
    """

    name = "i3d"

    def __init__(self, weights_path: str | Path, device: str = "cpu", resolution: int = 224):
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"I3D weights {str(path)!r} not found. FVD needs the Kinetics-400 I3D TorchScript file "
                "(i3d_torchscript.pt, as published with StyleGAN-V); download it on a connected machine and pass its "
                "path, or use a named stand-in extractor (its metric is then fd_<name>, not fvd)."
            )
        with warnings.catch_warnings(
            action="ignore", category=FutureWarning
        ):  # the published file is TorchScript
            self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.resolution = device, resolution

    def preprocess(self, videos: Tensor) -> Tensor:
        """(N, F, 3, H, W) in [0, 1] -> (N, 3, F, r, r) in [-1, 1]."""
        n, f, c, h, w = videos.shape
        r = self.resolution
        scale = r / min(h, w)
        size = (max(r, round(h * scale)), max(r, round(w * scale)))
        x = nnf.interpolate(
            videos.reshape(n * f, c, h, w).float(), size=size, mode="bilinear", align_corners=False
        )
        top, left = (size[0] - r) // 2, (size[1] - r) // 2
        x = x[:, :, top : top + r, left : left + r].reshape(n, f, c, r, r)
        return (x * 2 - 1).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def __call__(self, videos: Tensor) -> Tensor:
        x = self.preprocess(torch.as_tensor(videos)).to(self.device)
        # The keyword flags FVD code passes (StyleGAN-V): no rescaling, resize (a no-op at 224), raw logits.
        return self.model(x, rescale=False, resize=True, return_features=True).float().cpu()


class ClipVideoExtractor:
    """Stand-in video features from an open_clip image model (curation's CLIP loading): per video, the mean of
    its frames' unit embeddings and, with ``frame_diffs``, the mean absolute change between consecutive frames'
    embeddings (a crude temporal statistic I3D would capture). Named ``clip-<model>-<weights>[-tdiff]``."""

    def __init__(
        self,
        model_name: str = "tiny-clip",
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "cpu",
        frame_diffs: bool = True,
    ):
        self.embedder = ClipFrameEmbedder(model_name, pretrained, seed=seed, device=device)
        self.frame_diffs = frame_diffs
        label = self.embedder.name.replace("/", "-").replace(":", "-")
        self.name = f"clip-{label}" + ("-tdiff" if frame_diffs else "")

    def __call__(self, videos: Tensor) -> Tensor:
        feats = []
        for v in videos:
            e = torch.from_numpy(self.embedder.embed_images(list(to_uint8_frames(v)))).double()
            parts = [e.mean(0)]
            if self.frame_diffs:
                parts.append((e[1:] - e[:-1]).abs().mean(0) if len(e) > 1 else torch.zeros_like(e[0]))
            feats.append(torch.cat(parts))
        return torch.stack(feats)
