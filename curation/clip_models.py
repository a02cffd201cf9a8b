"""Building open_clip models: paper-scale names with real weights, or svdpipe's tiny random models.

The ``svd`` profile names open_clip models and pretrained tags (``ViT-L-14-quickgelu`` / ``openai`` for LAION's
aesthetic predictor, ``coca_ViT-L-14`` / ``mscoco_finetuned_laion2b_s13b_b90k`` for captions); open_clip downloads
them on a connected machine, or ``pretrained`` names a local weights file. The ``tiny`` profile uses the model
configs registered here (``tiny-clip``, ``tiny-coca``): the same open_clip classes (``CLIP``, ``CoCa``) at a size
that runs a few frames in milliseconds on a CPU, randomly initialised from a seed. Their outputs measure nothing;
every name built from them starts with "tiny" so tables show it.

Models load once per process (``load_model`` is cached), which is what a scoring worker needs.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import open_clip
import torch
from open_clip.transformer import MultimodalTransformer
from PIL import Image

from svdpipe.precision import warn_if_emulated

TINY_PREFIX = "tiny-"
# CLIP's BPE vocabulary (49408 tokens) is kept so that the shipped tokenizer encodes and decodes for tiny models too.
_VOCAB = 49408
_TINY_VISION = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
_TINY_TEXT = {"context_length": 77, "vocab_size": _VOCAB, "width": 64, "heads": 2, "layers": 2}
TINY_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-clip": {"embed_dim": 64, "vision_cfg": _TINY_VISION, "text_cfg": _TINY_TEXT},
    # CoCa's shape follows open_clip's coca_ViT-*.json: attentional pooling, token outputs, a CLS text token and
    # a multimodal decoder; context 76 because the CLS token takes the 77th position.
    "tiny-coca": {
        "embed_dim": 64,
        "vision_cfg": {**_TINY_VISION, "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {**_TINY_TEXT, "context_length": 76, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": _VOCAB, "width": 64, "heads": 2, "layers": 2,
                           "attn_pooler_heads": 2},
        "custom_text": True,
    },
}


def is_tiny(model_name: str) -> bool:
    return model_name.startswith(TINY_PREFIX)


@functools.cache
def register_tiny_models() -> None:
    """Register the tiny configs with open_clip's registry, once per process.

    open_clip only registers configs from JSON files; they are read at registration and kept in memory, so the
    files live in a temporary folder that is removed right away.
    """
    with tempfile.TemporaryDirectory(prefix="svdpipe-openclip-") as tmp:
        for name, cfg in TINY_MODEL_CONFIGS.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp)
    missing = set(TINY_MODEL_CONFIGS) - set(open_clip.list_models())
    if missing:
        raise RuntimeError(f"open_clip did not register svdpipe's tiny model configs {sorted(missing)}")


def weights_label(model_name: str, pretrained: str | None, seed: int) -> str:
    """Model identity for tables: ``tiny-clip/random-seed0``, ``ViT-L-14-quickgelu/openai``, ``x/file:w.pt``."""
    if pretrained is None:
        return f"{model_name}/random-seed{seed}"
    if _is_local_file(pretrained):
        return f"{model_name}/file:{Path(pretrained).name}"
    return f"{model_name}/{pretrained}"


def _is_local_file(pretrained: str) -> bool:
    return os.path.isfile(os.path.expanduser(pretrained))


@dataclass(frozen=True)
class LoadedModel:
    """An open_clip model in eval mode with its image preprocessing and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any
    name: str
    device: str
    dtype: torch.dtype = torch.float32

    def images_to_tensor(self, frames: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 HxWx3 frames -> a normalised batch, through the model's own open_clip preprocessing."""
        batch = torch.stack([self.preprocess(Image.fromarray(_as_rgb_uint8(f))) for f in frames])
        return batch.to(self.device, self.dtype)


def _as_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got shape {frame.shape} dtype {frame.dtype}")
    return np.ascontiguousarray(frame)


def inference_device(device: str = "auto", dtype: str = "float32") -> tuple[str, torch.dtype]:
    """``compute.device`` and ``compute.dtype`` as torch understands them: ``auto`` is CUDA when there is one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"compute.device={device!r} but torch sees no CUDA device here; set compute.device=cpu")
    warn_if_emulated(device.split(":")[0], dtype)
    return device, getattr(torch, dtype)


def load_model(model_name: str, pretrained: str | None = None, seed: int = 0, device: str = "cpu",
               dtype: str = "float32") -> LoadedModel:
    """Build an open_clip model, once per process for the same arguments (and the same local weights file).

    ``dtype`` (float32, bfloat16, float16) is the precision of the weights and of ``images_to_tensor``'s batches;
    random weights are drawn in float32 first, so a reduced-precision model is the float32 one rounded.
    """
    stamp = None
    if pretrained is not None and _is_local_file(pretrained):
        pretrained = os.path.abspath(os.path.expanduser(pretrained))
        st = os.stat(pretrained)
        # A rewritten file is a different model; the stamp keeps the cache from serving the old weights.
        stamp = (st.st_mtime_ns, st.st_size)
    return _load_model_cached(model_name, pretrained, seed, device, dtype, stamp)


@functools.lru_cache(maxsize=8)
def _load_model_cached(model_name: str, pretrained: str | None, seed: int, device: str, dtype: str,
                       _stamp) -> LoadedModel:
    register_tiny_models()
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; tiny models: {sorted(TINY_MODEL_CONFIGS)}")
    # Random init draws from torch's global generator; fork it so that building a model neither depends on nor
    # disturbs whatever else the process seeded.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            # Built on the CPU in float32 and moved after: the same seeded weights on every device and precision.
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        except RuntimeError as e:
            if pretrained is not None and not _is_local_file(pretrained):
                raise RuntimeError(
                    f"could not load open_clip {model_name!r} with pretrained={pretrained!r}: {str(e).rstrip('.')}. Without a "
                    "network, download the weights on a connected machine (open_clip caches them under the "
                    "Hugging Face cache) or set `pretrained` to a local weights file."
                ) from e
            raise
        if pretrained is None:
            # open_clip 3.3 never initialises CoCa's decoder output projection (torch.empty; its
            # MultimodalTransformer.init_parameters is broken and never called): a random CoCa would decode from
            # whatever that memory held, differently each build. Initialise it as that method intends.
            for module in model.modules():
                if isinstance(module, MultimodalTransformer) and module.text_projection is not None:
                    torch.nn.init.normal_(module.text_projection, std=module.width**-0.5)
    model.to(device=device, dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model_name),
        name=weights_label(model_name, pretrained, seed),
        device=device,
        dtype=getattr(torch, dtype),
    )
