"""Clip latents and conditioning, computed once per curated dataset so training never runs the encoders.

For each clip of ``curated/<variant>/shards`` and each training resolution ``HxWxF`` this stores, under
``latents/<variant>/<H>x<W>x<F>/``:

  latents        (N, F, 4, h, w)  x0: the autoencoder's posterior mode of F frames, scaled by its scaling_factor
  z_cond_aug     (N, K, 4, h, w)  the first frame noise-augmented with sigma_aug and encoded (mode, unscaled),
                                  K draws per clip (SVD Section 4; see training.conditioning)
  sigma_aug      (N, K)           ln(sigma_aug) ~ N(-3, 0.5^2)
  image_embeds   (N, D)           CLIP image embedding of the clean first frame, as the SVD pipeline computes it
  context        (N, L, D_text)   stage I text condition: open_clip's penultimate text layer (as SD 2.x uses)
  null_context   (1, L, D_text)   the empty caption's context, for condition dropout
  fps, motion_score, motion_bucket (N,)
  val            (N,)             1 for the evaluation set's clips (training.eval_set: the same for every
                                  variant, appended from its own shards; no variant trains on them)

F frames are taken every ``stride`` source frames, stride = round(clip fps / training.frame_rate) (shortened
when the clip is too short), from the middle of the clip, away from the transitions at its ends; ``fps`` is the
rate of the kept frames: what the model is conditioned on and what sampling asks for. Clips with fewer than F frames are left
out with their reason in ``index.json``; every clip of the dataset is either stored or listed there.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as nnf
from safetensors.torch import load_file, save_file
from torch import Tensor

from svdpipe.config import StageConfig, SvdpipeConfig
from svdpipe.storage import Storage
from training import eval_set
from training.conditioning import motion_bucket, sample_cond_aug

__all__ = ["LatentSet", "build_latents", "load_latents", "shape_key", "text_context"]


def shape_key(stage: StageConfig) -> str:
    return f"{stage.height}x{stage.width}x{stage.frames}"


def prefix(variant: str, key: str) -> str:
    return f"latents/{variant}/{key}"


@dataclass
class LatentSet:
    tensors: dict[str, Tensor]
    index: dict

    def __len__(self) -> int:
        return int(self.tensors["latents"].shape[0])

    def split(self, val: bool) -> LatentSet:
        mask = self.tensors["val"].bool() == val
        keep = {k: (v if k == "null_context" else v[mask]) for k, v in self.tensors.items()}
        ids = [c for c, m in zip(self.index["clip_ids"], mask.tolist()) if m]
        return LatentSet(keep, {**self.index, "clip_ids": ids})


@torch.no_grad()
def text_context(loaded, captions: list[str]) -> Tensor:
    """(N, 77, width) token states of open_clip's text tower at its penultimate block, then ln_final.

    Stable Diffusion 2.x conditions on this layer of OpenCLIP ViT-H/14 ("penultimate"), not on the pooled
    embedding; the tiny profile uses the tiny open_clip text tower the same way.
    """
    m = loaded.model
    tokens = loaded.tokenizer(captions)
    x = m.token_embedding(tokens) + m.positional_embedding
    for block in m.transformer.resblocks[:-1]:
        x = block(x, attn_mask=m.attn_mask)
    return m.ln_final(x).float()


def _decode_clip(mp4: bytes) -> tuple[list[np.ndarray], float]:
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0)
        return [f.to_ndarray(format="rgb24") for f in c.decode(s)], fps


def _to_tensor(frames: list[np.ndarray], height: int, width: int) -> Tensor:
    """(F, 3, H, W) in [-1, 1]: resized so the frame covers HxW, then center-cropped (no distortion)."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    scale = max(height / x.shape[2], width / x.shape[3])
    size = (max(height, round(x.shape[2] * scale)), max(width, round(x.shape[3] * scale)))
    x = nnf.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[:, :, top : top + height, left : left + width].clamp(-1, 1)


def _clip_seed(seed: int, clip_id: str) -> int:
    return (seed * 1_000_003 + int(hashlib.sha1(clip_id.encode()).hexdigest()[:12], 16)) % 2**63


def profile_vae(cfg: SvdpipeConfig):
    """The profile's autoencoder alone, the same one ``Encoders`` builds (the latents were made with it).

    Random (tiny) weights come from ``cfg.seed`` and the autoencoder is built first after seeding, in
    ``Encoders`` too, so both give identical weights; decoding needs nothing else.
    """
    from training.encoders import build_vae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_vae(cfg.training.model_size, cfg.training.vae_path).eval()


class Encoders:
    """The autoencoder, image encoder and text tower of a profile, loaded once."""

    def __init__(self, cfg: SvdpipeConfig):
        from curation.clip_models import load_model
        from training.encoders import build_feature_extractor, build_image_encoder, build_vae

        t = cfg.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # random (tiny) encoders are the same in every process (see profile_vae)
            self.vae = build_vae(t.model_size, t.vae_path).eval()
            self.image_encoder = build_image_encoder(t.model_size, t.image_encoder_path).eval()
        self.feature_extractor = build_feature_extractor()
        self.text = load_model(t.text_encoder, t.text_encoder_pretrained, seed=cfg.seed)
        self.names = {
            "vae": t.vae_path or f"random-{t.model_size}-seed{cfg.seed}",
            "image_encoder": t.image_encoder_path or f"random-{t.model_size}-seed{cfg.seed}",
            "text_encoder": self.text.name,
        }


def frame_window(n: int, fps: float, frames: int, frame_rate: float) -> tuple[int, int]:
    """(start, stride) of ``frames`` frames at about ``frame_rate`` from the middle of a clip of ``n`` frames."""
    stride = max(1, min(round(fps / frame_rate) if fps > 0 else 1, n // frames))
    span = stride * (frames - 1) + 1
    return (n - span) // 2, stride


@torch.no_grad()
def encode_clip(enc: Encoders, frames: list[np.ndarray], fps: float, stage: StageConfig, t, g: torch.Generator) -> dict:
    from training.encoders import encode_latents, image_embeddings

    start, stride = frame_window(len(frames), fps, stage.frames, t.frame_rate)
    picked = frames[start : start + stride * stage.frames : stride]
    k = t.cond_aug_samples
    x = _to_tensor(picked, stage.height, stage.width)
    sigma_aug = sample_cond_aug(k, generator=g)
    first = x[:1].expand(k, -1, -1, -1)
    augmented = first + sigma_aug.view(-1, 1, 1, 1) * torch.randn(first.shape, generator=g)
    return {
        "latents": encode_latents(enc.vae, x) * enc.vae.config.scaling_factor,
        "z_cond_aug": encode_latents(enc.vae, augmented),
        "sigma_aug": sigma_aug,
        "image_embeds": image_embeddings(enc.image_encoder, enc.feature_extractor, x[:1])[0],
        "stride": stride,
    }


def _read_shards(root: Storage, keys: list[str]):
    """Yield (clip_id, mp4 bytes, metadata row, caption) from WebDataset tar shards, in shard order."""
    import tarfile

    for key in keys:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "shard.tar"
            root.download(key, local)
            with tarfile.open(local) as tar:
                members: dict[str, dict[str, bytes]] = {}
                for m in tar.getmembers():
                    clip_id, ext = m.name.split(".", 1)
                    members.setdefault(clip_id, {})[ext] = tar.extractfile(m).read()
            for clip_id in sorted(members):
                parts = members[clip_id]
                yield clip_id, parts["mp4"], json.loads(parts["json"]), parts.get("txt", b"").decode()


def build_latents(root: Storage, variant: str, cfg: SvdpipeConfig, progress: bool = True) -> dict[str, dict]:
    """Compute (or reuse) the latents of every stage resolution of ``variant``; returns each key's index."""
    from tqdm import tqdm

    base = f"curated/{variant}"
    if not root.exists(f"{base}/selection.json"):
        raise FileNotFoundError(f"{base}/selection.json is missing: run `svdpipe curate --variant {variant}` first")
    selection = json.loads(root.read_text(f"{base}/selection.json"))
    shards = sorted(k for k in root.list(f"{base}/shards") if k.endswith(".tar"))
    t = cfg.training
    held_out, eval_shards = eval_set.prepare(root, cfg, progress)
    stages = {shape_key(s): s for s in t.stages.values()}
    enc: Encoders | None = None
    out: dict[str, dict] = {}
    for key, stage in sorted(stages.items()):
        fingerprint = {
            "dataset_version": selection["clip_ids_sha1"],
            "shape": key,
            "model_size": t.model_size,
            "cond_aug_samples": t.cond_aug_samples,
            "frame_rate": t.frame_rate,
            "motion_score_max": t.motion_score_max,
            "eval_set": held_out.fingerprint,
            "seed": cfg.seed,
            "encoders": [t.vae_path, t.image_encoder_path, t.text_encoder, t.text_encoder_pretrained],
        }
        index_key = f"{prefix(variant, key)}/index.json"
        if root.exists(index_key):
            old = json.loads(root.read_text(index_key))
            if old.get("fingerprint") == fingerprint:
                out[key] = old  # a rerun is free: same clips, same encoders, same shapes
                continue
        enc = enc or Encoders(cfg)
        rows: dict[str, list] = {}
        kept, skipped, captions = [], {}, []
        bar = tqdm(total=selection.get("clips_kept", 0) + len(held_out), desc=f"latents {variant} {key}", unit="clip",
                   disable=not progress)
        for clip_id, mp4, meta, caption, role in eval_set.with_held_out(
                _read_shards(root, shards), _read_shards(root, eval_shards), held_out):
            bar.update(1)
            if role == "held_out":
                skipped[clip_id] = eval_set.HELD_OUT
                continue
            frames, fps = _decode_clip(mp4)
            if len(frames) < stage.frames:
                skipped[clip_id] = f"{len(frames)} frames < {stage.frames} needed"
                continue
            g = torch.Generator().manual_seed(_clip_seed(cfg.seed, clip_id))
            item = encode_clip(enc, frames, fps, stage, t, g)
            score = meta.get("motion_score")
            score = float("nan") if score is None else float(score)
            item["fps"] = torch.tensor(fps / item.pop("stride"))
            item["motion_score"] = torch.tensor(score)
            item["motion_bucket"] = motion_bucket(0.0 if score != score else score, t.motion_score_max).float()
            item["val"] = torch.tensor(float(role == "eval"))
            for name, v in item.items():
                rows.setdefault(name, []).append(v)
            kept.append(clip_id)
            captions.append(caption)
        bar.close()
        if not kept:
            raise ValueError(f"no clip of {base} has {stage.frames} frames for {key}; skipped: {skipped}")
        tensors = {name: torch.stack(v).contiguous() for name, v in rows.items()}
        tensors["context"] = text_context(enc.text, captions)
        tensors["null_context"] = text_context(enc.text, [""])
        with tempfile.TemporaryDirectory() as tmp:
            save_file(tensors, f"{tmp}/latents.safetensors")
            root.upload(Path(tmp) / "latents.safetensors", f"{prefix(variant, key)}/latents.safetensors")
        index = {
            "fingerprint": fingerprint,
            "clip_ids": kept,
            "captions": captions,
            "skipped": skipped,
            "clips": len(kept),
            "val_clips": int(tensors["val"].sum()),
            "encoders": enc.names,
            "scaling_factor": float(enc.vae.config.scaling_factor),
        }
        root.write_text(index_key, json.dumps(index, indent=1))  # written last: its presence marks completion
        out[key] = index
    return out


def load_latents(root: Storage, variant: str, stage: StageConfig) -> LatentSet:
    key = prefix(variant, shape_key(stage))
    if not root.exists(f"{key}/index.json"):
        raise FileNotFoundError(f"{key} is missing: materialize the latents of variant {variant!r} first")
    with tempfile.TemporaryDirectory() as tmp:
        root.download(f"{key}/latents.safetensors", Path(tmp) / "l.safetensors")
        tensors = load_file(Path(tmp) / "l.safetensors")
    return LatentSet(tensors, json.loads(root.read_text(f"{key}/index.json")))
