"""Clip latents and conditioning, computed once per curated dataset so training never runs the encoders.

For each clip of ``curated/<variant>/shards`` and each training resolution ``HxWxF`` this stores, in the shards
of ``latents/<variant>/<H>x<W>x<F>/`` (``training.latent_store``: written as they are encoded, resumable, bf16 for
the big fields):

  latents        (N, F, 4, h, w)  x0: the autoencoder's posterior mode of F frames, scaled by its scaling_factor
  z_cond_aug     (N, K, 4, h, w)  the first frame noise-augmented with sigma_aug and encoded (mode, unscaled),
                                  K draws per clip (SVD Section 4; see training.conditioning)
  sigma_aug      (N, K)           ln(sigma_aug) ~ N(-3, 0.5^2)
  image_embeds   (N, D)           CLIP image embedding of the clean first frame, as the SVD pipeline computes it
  context        (N, L, D_text)   text condition: open_clip's penultimate text layer (as SD 2.x uses); only in
                                  the store of a resolution that Stage I or a text-conditioned stage trains at
  null_context   (1, L, D_text)   the empty caption's context, for condition dropout (likewise)
  cond_frame     (N, 3, H, W)     the clean first frame in [-1, 1], with ``training.cond_aug_online`` for the
                                  resolutions of image-conditioned stages (noised and encoded every step)
  fps, motion_score, motion_bucket (N,)
  val            (N,)             1 for the evaluation set's clips (training.eval_set: the same for every
                                  variant, appended from its own shards; no variant trains on them)

F frames are taken every ``stride`` source frames, stride = round(clip fps / training.frame_rate) (shortened
when the clip is too short), from the middle of the clip, away from the transitions at its ends; ``fps`` is the
rate of the kept frames: what the model is conditioned on and what sampling asks for. Clips with fewer than F frames are left
out with their reason in ``index.json``; every clip of the dataset is either stored or listed there.

``LatentSet`` is a small part held in memory (the evaluation rows, test data); ``LatentStore`` the whole store,
read row by row. Both give ``rows(idx, fields)``, ``frames`` and ``null_context()`` to ``training.data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from svdpipe.config_schema import StageConfig, SvdpipeConfig
from svdpipe.storage import Storage
from training import eval_set
from training.conditioning import motion_bucket, sample_cond_aug
from training.latent_store import LatentStore, ShardWriter, resume_point

__all__ = ["LatentSet", "LatentStore", "build_latents", "load_latents", "shape_key", "text_context"]


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
        rows = {k: [c for c, m in zip(self.index[k], mask.tolist()) if m]
                for k in ("clip_ids", "captions") if k in self.index}
        return LatentSet(keep, {**self.index, **rows})

    def materialize(self, rows: range | None = None) -> LatentSet:
        """Rows ``rows`` (default all) as a LatentSet, as ``LatentStore.materialize`` gives them."""
        if rows is None:
            return self
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        keep = {k: (v if k == "null_context" else v[idx]) for k, v in self.tensors.items()}
        meta = {k: [self.index[k][i] for i in rows] for k in ("clip_ids", "captions") if k in self.index}
        return LatentSet(keep, {**self.index, **meta})

    @property
    def fields(self) -> set[str]:
        return set(self.tensors)

    @property
    def frames(self) -> int:
        return int(self.tensors["latents"].shape[1])

    def null_context(self) -> Tensor:
        return self.tensors["null_context"]

    def rows(self, idx, fields) -> dict[str, Tensor]:
        missing = [f for f in fields if f not in self.tensors]
        if missing:
            raise KeyError(f"the latent store has no {missing}: rebuild the latents of this variant")
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {f: self.tensors[f][idx] for f in fields}


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
def encode_clip(enc: Encoders, frames: list[np.ndarray], fps: float, stage: StageConfig, t, g: torch.Generator,
                keep_frame: bool = False) -> dict:
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
        **({"cond_frame": x[0]} if keep_frame else {}),  # pixels for training.cond_aug_online
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


def _needs_text(stages: list[tuple[str, StageConfig]]) -> bool:
    """Whether a resolution's store keeps the caption context: Stage I and text-conditioned video stages read it."""
    return any(n == "1" or s.conditioning == "text" for n, s in stages)


def build_latents(root: Storage, variant: str, cfg: SvdpipeConfig, progress: bool = True,
                  on_shard: Callable[[str, int], None] | None = None) -> dict[str, dict]:
    """Compute (or reuse, or finish) the latent store of every stage resolution of ``variant``; returns each key's
    index. ``on_shard(key, shards written)`` runs after each shard is stored."""
    from tqdm import tqdm

    base = f"curated/{variant}"
    if not root.exists(f"{base}/selection.json"):
        raise FileNotFoundError(f"{base}/selection.json is missing: run `svdpipe curate --variant {variant}` first")
    selection = json.loads(root.read_text(f"{base}/selection.json"))
    shards = sorted(k for k in root.list(f"{base}/shards") if k.endswith(".tar"))
    t = cfg.training
    held_out, eval_shards = eval_set.prepare(root, cfg, progress)
    stages: dict[str, list[tuple[str, StageConfig]]] = {}
    for n, s in t.stages.items():
        stages.setdefault(shape_key(s), []).append((n, s))
    enc: Encoders | None = None
    out: dict[str, dict] = {}
    for key, group in sorted(stages.items()):
        stage, text = group[0][1], _needs_text(group)
        frame = t.cond_aug_online and any(n != "1" and s.conditioning == "image" for n, s in group)
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
            "store": {"format": "shards-bf16", "shard_clips": t.latent_store.shard_clips, "context": text,
                      "cond_frame": frame},
        }
        store = prefix(variant, key)
        index_key = f"{store}/index.json"
        if root.exists(index_key):
            old = json.loads(root.read_text(index_key))
            if old.get("fingerprint") == fingerprint:
                out[key] = old  # a rerun is free: same clips, same encoders, same shapes
                continue
        enc = enc or Encoders(cfg)
        writer = ShardWriter(root, store, fingerprint, t.latent_store.shard_clips,
                             resume_point(root, store, fingerprint))

        def flush(consumed: int) -> None:
            extra = {"context": text_context(enc.text, writer.pending_captions)} if text else None
            before = writer.shards
            writer.flush(consumed, extra)
            if on_shard is not None and writer.shards > before:
                on_shard(key, writer.shards)

        bar = tqdm(total=selection.get("clips_kept", 0) + len(held_out), initial=writer.consumed,
                   desc=f"latents {variant} {key}", unit="clip", disable=not progress)
        pos, seen_eval = 0, False
        for pos, (clip_id, mp4, meta, caption, role) in enumerate(eval_set.with_held_out(
                _read_shards(root, shards), _read_shards(root, eval_shards), held_out), 1):
            if pos <= writer.consumed:
                continue  # in a shard an interrupted build already stored
            bar.update(1)
            if role == "held_out":
                writer.skip(clip_id, eval_set.HELD_OUT)
                continue
            frames, fps = _decode_clip(mp4)
            if len(frames) < stage.frames:
                writer.skip(clip_id, f"{len(frames)} frames < {stage.frames} needed")
                continue
            if seen_eval and role != "eval":
                raise AssertionError("evaluation rows must come last (training.eval_set.with_held_out)")
            seen_eval = role == "eval"
            g = torch.Generator().manual_seed(_clip_seed(cfg.seed, clip_id))
            item = encode_clip(enc, frames, fps, stage, t, g, keep_frame=frame)
            score = meta.get("motion_score")
            score = float("nan") if score is None else float(score)
            item["fps"] = torch.tensor(fps / item.pop("stride"))
            item["motion_score"] = torch.tensor(score)
            item["motion_bucket"] = motion_bucket(0.0 if score != score else score, t.motion_score_max).float()
            item["val"] = torch.tensor(float(role == "eval"))
            if writer.add(clip_id, caption, item):
                flush(pos)
        flush(pos)
        bar.close()
        if not writer.clips:
            raise ValueError(f"no clip of {base} has {stage.frames} frames for {key}; skipped: {writer.skipped}")
        out[key] = writer.finish(
            {"fingerprint": fingerprint, "encoders": enc.names, "context": text,
             "scaling_factor": float(enc.vae.config.scaling_factor)},
            text_context(enc.text, [""]) if text else None,
        )
    return out


def load_latents(root: Storage, variant: str, stage: StageConfig) -> LatentStore:
    """The latent store of ``variant`` at ``stage``'s resolution (rows read on demand; ``.materialize()`` for a
    small part as a ``LatentSet``)."""
    try:
        return LatentStore.open(root, prefix(variant, shape_key(stage)))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (variant {variant!r})") from None
