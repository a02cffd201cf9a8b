"""Training batches from the stored latents: deterministic in (seed, step), whatever the number of processes.

The samples of a step are positions step*B .. step*B+B-1 of a stream of epoch permutations seeded by (seed,
epoch) (``sample_indices``), so a resumed run continues the same stream and every clip is seen once per epoch.
Stage I draws images: one random frame of a clip's window, with the clip's caption context.

Two ways to get them, one assembly (``step_samples``):

* ``video_batches`` / ``text_video_batches`` / ``image_batches`` over a ``LatentSet`` in memory: the *global*
  batch of a step (``training.engine.train_steps`` slices it per rank); for tests and small sets.
* ``RankBatches`` over a ``training.latent_store.LatentStore``: only this rank's contiguous share of the global
  batch, read from the shards holding those samples by a ``torch.utils.data.DataLoader`` whose workers prepare
  the coming steps (``training.latent_store.num_workers``, ``prefetch_factor``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["IMAGE", "RankBatches", "SampleSpec", "TEXT_VIDEO", "VIDEO", "image_batches", "sample_indices",
           "spec_for", "step_samples", "text_video_batches", "video_batches"]

Batch = dict[str, Tensor]
VIDEO_KEYS = ("latents", "z_cond_aug", "sigma_aug", "image_embeds", "fps", "motion_bucket")


@dataclass(frozen=True)
class SampleSpec:
    """Which stored fields a stage's samples carry; ``image``: one frame per sample (Stage I)."""

    keys: tuple[str, ...]
    image: bool = False
    null_context: bool = False


VIDEO = SampleSpec(VIDEO_KEYS)
TEXT_VIDEO = SampleSpec(("latents", "context", "fps", "motion_bucket"), null_context=True)
IMAGE = SampleSpec(("latents", "context"), image=True, null_context=True)


def spec_for(stage: int, conditioning: str, cond_aug_online: bool = False) -> SampleSpec:
    if stage == 1:
        return IMAGE
    if conditioning == "text":
        return TEXT_VIDEO
    if cond_aug_online:  # the conditioning frame's pixels, noised and encoded every step
        return SampleSpec(("latents", "cond_frame", "image_embeds", "fps", "motion_bucket"))
    return VIDEO


def sample_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Indices of the samples of ``step``: positions step*B .. step*B+B-1 of the concatenated epoch permutations."""
    if n < 1:
        raise ValueError("no training samples: the dataset is empty")
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
        sel = pos.div(n, rounding_mode="floor") == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def _samples(data, spec: SampleSpec) -> int:
    return len(data) * (data.frames if spec.image else 1)


def step_samples(data, spec: SampleSpec, batch_size: int, seed: int, step: int, lo: int = 0,
                 hi: int | None = None) -> Batch:
    """Samples ``lo .. hi`` of the global batch of ``step`` from ``data`` (a LatentSet or a LatentStore view):
    only those rows are read."""
    idx = sample_indices(_samples(data, spec), batch_size, step, seed)[lo:hi]
    if spec.image:
        frames = data.frames
        out = data.rows(idx // frames, spec.keys)
        out["latents"] = out["latents"][torch.arange(len(idx)), idx % frames]
    else:
        out = data.rows(idx, spec.keys)
    if spec.null_context:
        out["null_context"] = data.null_context().expand(len(idx), -1, -1)
    return out


def _check_fields(data, spec: SampleSpec) -> None:
    missing = [k for k in (*spec.keys, *(("null_context",) if spec.null_context else ())) if k not in data.fields]
    if missing:
        raise KeyError(f"the latent store has no {missing}: rebuild the latents of this variant")


def _global(data, spec: SampleSpec, batch_size: int, seed: int) -> Callable[[int], Batch]:
    _check_fields(data, spec)
    return lambda step: step_samples(data, spec, batch_size, seed, step)


def video_batches(data, batch_size: int, seed: int, keys: tuple[str, ...] = VIDEO_KEYS) -> Callable[[int], Batch]:
    """Image-to-video global batches; ``keys`` picks the stored fields (``cond_frame`` instead of the stored
    augmentations when the conditioning frame is encoded online)."""
    return _global(data, SampleSpec(keys), batch_size, seed)


def text_video_batches(data, batch_size: int, seed: int) -> Callable[[int], Batch]:
    """Text-to-video global batches: the clip's latents, caption context, fps and motion bucket."""
    return _global(data, TEXT_VIDEO, batch_size, seed)


def image_batches(data, batch_size: int, seed: int) -> Callable[[int], Batch]:
    return _global(data, IMAGE, batch_size, seed)


class _StepStream(IterableDataset):
    """(step, this rank's samples of it) for steps ``start ..``; worker w of W prepares steps start+w, start+w+W,
    ..., which the DataLoader's round robin over its workers returns in step order."""

    def __init__(self, data, spec: SampleSpec, batch_size: int, seed: int, lo: int, hi: int, start: int, stop: int):
        super().__init__()
        self.data, self.spec, self.batch_size, self.seed = data, spec, batch_size, seed
        self.lo, self.hi, self.start, self.stop = lo, hi, start, stop

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + w, self.stop, n):
            yield step, step_samples(self.data, self.spec, self.batch_size, self.seed, step, self.lo, self.hi)


class RankBatches:
    """``batches_fn(step)`` for ``training.engine.train_steps`` giving only this rank's share (``rank_share``):
    samples ``rank*per_rank .. (rank+1)*per_rank`` of the global batch of ``step``, read ahead by a DataLoader.
    Steps are asked in order; asking any other step restarts the stream there (a resume)."""

    rank_share = True

    def __init__(self, data, spec: SampleSpec, batch_size: int, seed: int, rank: int, per_rank: int, *,
                 stop: int = 2**62, num_workers: int = 0, prefetch_factor: int = 2):
        _check_fields(data, spec)
        if _samples(data, spec) < 1:
            raise ValueError("no training samples: the dataset is empty")
        self.data, self.spec, self.batch_size, self.seed = data, spec, batch_size, seed
        self.lo, self.hi, self.stop = rank * per_rank, (rank + 1) * per_rank, stop
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self._it: Iterator | None = None
        self._next = -1

    def _open(self, start: int) -> None:
        stream = _StepStream(self.data, self.spec, self.batch_size, self.seed, self.lo, self.hi, start, self.stop)
        workers = {"num_workers": self.num_workers, "prefetch_factor": self.prefetch_factor,
                   "persistent_workers": False} if self.num_workers else {}
        self._it = iter(DataLoader(stream, batch_size=None, **workers))
        self._next = start

    def __call__(self, step: int) -> Batch:
        if self._it is None or step != self._next:
            self.close()
            self._open(step)
        got, batch = next(self._it)
        if got != step:
            raise RuntimeError(f"the loader returned step {got} for step {step}")
        self._next = step + 1
        return batch

    def close(self) -> None:
        """Stop the workers (also done when this object is collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
