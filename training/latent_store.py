"""The latent store: a variant's clip latents at one resolution, as shards of a fixed number of clips.

    latents/<variant>/<HxWxF>/shard-00000.safetensors  ``training.latent_store.shard_clips`` clips (the last fewer)
                             null_context.safetensors  the empty caption's context (text-conditioned stores only)
                             index.json                written last: counts, shards, skipped clips, encoders

A shard is written as soon as its clips are encoded (``ShardWriter``), so a build holds one shard in memory and
a killed build resumes after its last complete shard: a shard's presence marks it complete (uploads are atomic),
and its metadata carries what resuming needs (the fingerprint, the clips it holds with their captions, the clips
skipped since the previous shard, and how many source clips were consumed). The evaluation clips come last, so the
training rows are ``0 .. train_clips`` and the evaluation rows the rest.

The big fields (latents, z_cond_aug, image_embeds, context) are stored in bf16, the scalars in fp32; readers get
fp32. Reading (``LatentStore.rows``) fetches only the byte ranges of the requested rows: a shard is a safetensors
file whose tensors keep their rows contiguous, so row r of a field is one range after the shard's header (cached
per process). A rank drawing a few samples of a random global permutation thus reads those samples, not whole
shards, from a local folder or S3 alike.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from svdpipe.storage import Storage, open_storage

__all__ = ["BF16_FIELDS", "LatentStore", "ShardWriter", "resume_point", "shard_key", "write_rows"]

BF16_FIELDS = frozenset({"latents", "z_cond_aug", "image_embeds", "context", "null_context", "cond_frame"})
INDEX = "index.json"
NULL_CONTEXT = "null_context.safetensors"
_DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16, "I64": torch.int64}
_HEADERS_KEPT = 64  # shard headers cached per process (a few KB each, plus the shard's captions)


def shard_key(base: str, i: int) -> str:
    return f"{base}/shard-{i:05d}.safetensors"


def _stored(name: str, v: Tensor) -> Tensor:
    return v.to(torch.bfloat16 if name in BF16_FIELDS else torch.float32).contiguous()


def read_header(root: Storage, key: str) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, first data byte) of a safetensors object, from two small range reads."""
    (n,) = struct.unpack("<Q", root.read_range(key, 0, 8))
    header = json.loads(root.read_range(key, 8, 8 + n))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def resume_point(root: Storage, base: str, fingerprint: dict) -> list[dict]:
    """The metadata of the complete shards of an interrupted build with this fingerprint, in order; every other
    shard (another fingerprint, or after a gap) and a stale index are deleted."""
    done: list[dict] = []
    want = json.dumps(fingerprint, sort_keys=True)
    while root.exists(shard_key(base, len(done))):
        meta = read_header(root, shard_key(base, len(done)))[1]
        if meta.get("fingerprint") != want:
            break
        done.append(meta)
    keep = {shard_key(base, i) for i in range(len(done))}
    for key in root.list(base):
        if key not in keep:
            root.delete(key)  # a shard of other inputs, the old index, a single-file store of an older version
    return done


class ShardWriter:
    """Collects encoded clips and writes a shard each ``shard_clips`` of them (module docstring)."""

    def __init__(self, root: Storage, base: str, fingerprint: dict, shard_clips: int, done: list[dict]):
        self.root, self.base, self.shard_clips = root, base, shard_clips
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.shards = len(done)
        self.clips = sum(len(json.loads(m["clip_ids"])) for m in done)
        self.val_clips = sum(int(m["val_clips"]) for m in done)
        self.skipped: dict[str, str] = {}
        for m in done:
            self.skipped.update(json.loads(m["skipped"]))
        self.consumed = int(done[-1]["consumed"]) if done else 0  # source clips the complete shards account for
        self._rows: list[dict[str, Tensor]] = []
        self._ids: list[str] = []
        self._captions: list[str] = []
        self._skipped_here: dict[str, str] = {}

    def skip(self, clip_id: str, reason: str) -> None:
        self._skipped_here[clip_id] = reason

    def add(self, clip_id: str, caption: str, row: dict[str, Tensor]) -> bool:
        """Queue one clip's row; True when the shard is full (call ``flush``)."""
        self._rows.append(row)
        self._ids.append(clip_id)
        self._captions.append(caption)
        return len(self._rows) >= self.shard_clips

    def flush(self, consumed: int, extra: dict[str, Tensor] | None = None) -> None:
        """Write the queued rows (plus ``extra`` per-row fields, e.g. the text context) as the next shard;
        ``consumed``: source clips accounted for once it exists."""
        if not self._rows:
            return
        tensors = {k: torch.stack([r[k] for r in self._rows]) for k in self._rows[0]}
        tensors.update(extra or {})
        tensors = {k: _stored(k, v) for k, v in tensors.items()}
        meta = {"fingerprint": self.fingerprint, "clip_ids": json.dumps(self._ids),
                "captions": json.dumps(self._captions), "skipped": json.dumps(self._skipped_here),
                "consumed": str(consumed), "val_clips": str(int(tensors["val"].sum()))}
        key = shard_key(self.base, self.shards)
        with tempfile.TemporaryDirectory() as tmp:
            save_file(tensors, f"{tmp}/shard.safetensors", metadata=meta)
            self.root.upload(Path(tmp) / "shard.safetensors", key)  # atomic: present means complete
        self.shards += 1
        self.clips += len(self._ids)
        self.val_clips += int(meta["val_clips"])
        self.skipped.update(self._skipped_here)
        self.consumed = consumed
        self._rows, self._ids, self._captions, self._skipped_here = [], [], [], {}

    @property
    def pending_captions(self) -> list[str]:
        return list(self._captions)

    def finish(self, index: dict, null_context: Tensor | None) -> dict:
        """Write the null context and, last, the index (its presence marks the whole store complete)."""
        self.skipped.update(self._skipped_here)
        if null_context is not None:
            with tempfile.TemporaryDirectory() as tmp:
                save_file({"null_context": _stored("null_context", null_context)}, f"{tmp}/n.safetensors")
                self.root.upload(Path(tmp) / "n.safetensors", f"{self.base}/{NULL_CONTEXT}")
        # Counts only, no per-shard or per-clip lists: every rank and worker holds the index, whatever the size.
        index = {**index, "shard_clips": self.shard_clips, "shards": self.shards, "clips": self.clips,
                 "train_clips": self.clips - self.val_clips, "val_clips": self.val_clips, "skipped": self.skipped}
        self.root.write_text(f"{self.base}/{INDEX}", json.dumps(index, indent=1))
        return index


class LatentStore:
    """Rows ``start .. stop`` of a latent store, read on demand (module docstring).

    Holds the data root's URI, not its client, so it can be handed to DataLoader workers; each process opens
    its own storage and header cache. ``reads`` counts the row reads per shard this process made.
    """

    def __init__(self, root_uri: str, base: str, index: dict, start: int = 0, stop: int | None = None):
        self.root_uri, self.base, self.index = root_uri, base, index
        self.start, self.stop = start, index["clips"] if stop is None else stop
        self.shard_clips = int(index["shard_clips"])
        self.reads: Counter[str] = Counter()
        self._state: tuple[int, Storage, OrderedDict] | None = None
        self._null: Tensor | None = None

    @classmethod
    def open(cls, root: Storage, base: str) -> LatentStore:
        if not root.exists(f"{base}/{INDEX}"):
            raise FileNotFoundError(f"{base} is missing: materialize the latents of this variant first")
        index = json.loads(root.read_text(f"{base}/{INDEX}"))
        if "shards" not in index:
            raise FileNotFoundError(f"{base} is a single-file store of an older version: rebuild the latents")
        return cls(root.uri(), base, index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_state": None, "reads": Counter()}

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, start: int, stop: int) -> LatentStore:
        """Rows ``start .. stop`` of this view, as a view."""
        return LatentStore(self.root_uri, self.base, self.index, self.start + start, self.start + stop)

    def split(self, val: bool) -> LatentStore:
        """The evaluation rows (``val``) or the training rows: the evaluation clips are stored last."""
        n = int(self.index["train_clips"])
        return LatentStore(self.root_uri, self.base, self.index, *((n, self.index["clips"]) if val else (0, n)))

    def training(self) -> LatentStore:
        """The training rows; every row when all are held out (a tiny corpus), as training has always done."""
        train = self.split(val=False)
        return train if len(train) else LatentStore(self.root_uri, self.base, self.index)

    def _storage(self) -> tuple[Storage, OrderedDict]:
        if self._state is None or self._state[0] != os.getpid():
            self._state = (os.getpid(), open_storage(self.root_uri), OrderedDict())
        return self._state[1], self._state[2]

    def _header(self, shard: int) -> tuple[dict, dict, int]:
        root, cache = self._storage()
        if shard in cache:
            cache.move_to_end(shard)
            return cache[shard]
        entry = read_header(root, shard_key(self.base, shard))
        cache[shard] = entry
        if len(cache) > _HEADERS_KEPT:
            cache.popitem(last=False)
        return entry

    @property
    def fields(self) -> set[str]:
        return set(self._header(0)[0]) | ({"null_context"} if self.index.get("context") else set())

    @property
    def frames(self) -> int:
        return int(self._header(0)[0]["latents"]["shape"][1])

    def null_context(self) -> Tensor:
        if self._null is None:
            root, _ = self._storage()
            data = root.read_bytes(f"{self.base}/{NULL_CONTEXT}")
            self._null = load_safetensors(data)["null_context"].float()
        return self._null

    def rows(self, idx, fields) -> dict[str, Tensor]:
        """{field: (len(idx), ...) fp32} of rows ``idx`` of this view; reads only those rows' bytes."""
        idx = [int(i) for i in idx]
        if any(i < 0 or i >= len(self) for i in idx):
            raise IndexError(f"row outside 0..{len(self)}")
        root, _ = self._storage()
        entries = self._header(0)[0]
        missing = [f for f in fields if f not in entries]
        if missing:
            raise KeyError(f"the latent store has no {missing}: rebuild the latents of this variant")
        out = {f: torch.empty((len(idx), *entries[f]["shape"][1:]), dtype=torch.float32) for f in fields}
        for j, row in enumerate(idx):
            shard, offset = divmod(self.start + row, self.shard_clips)
            header, _, data_at = self._header(shard)
            key = shard_key(self.base, shard)
            self.reads[key] += 1
            for f in fields:
                e = header[f]
                lo, hi = e["data_offsets"]
                size = (hi - lo) // e["shape"][0]
                a = data_at + lo + offset * size
                raw = bytearray(root.read_range(key, a, a + size))
                out[f][j] = torch.frombuffer(raw, dtype=_DTYPES[e["dtype"]]).view(e["shape"][1:]).float()
        return out

    def _meta(self, name: str, rows: range) -> list:
        out = []
        for shard in range((self.start + rows.start) // self.shard_clips,
                           (self.start + rows.stop - 1) // self.shard_clips + 1 if len(rows) else 0):
            values = json.loads(self._header(shard)[1][name])
            first = shard * self.shard_clips
            for i, v in enumerate(values):
                if self.start + rows.start <= first + i < self.start + rows.stop:
                    out.append(v)
        return out

    def clip_ids(self, rows: range | None = None) -> list[str]:
        return self._meta("clip_ids", rows or range(len(self)))

    def captions(self, rows: range | None = None) -> list[str]:
        return self._meta("captions", rows or range(len(self)))

    def materialize(self, rows: range | None = None):
        """A ``training.latents.LatentSet`` of ``rows`` (default all) of this view: for the small evaluation set and
        the stage samples, never for training data."""
        from training.latents import LatentSet

        rows = rows if rows is not None else range(len(self))
        fields = sorted(self._header(0)[0])
        tensors = self.rows(rows, fields)
        if self.index.get("context"):
            tensors["null_context"] = self.null_context()
        return LatentSet(tensors, {**self.index, "clip_ids": self.clip_ids(rows), "captions": self.captions(rows)})


def write_rows(root: Storage, base: str, tensors: dict[str, Tensor], clip_ids: list[str], captions: list[str],
               shard_clips: int, index: dict) -> dict:
    """A store of rows held in memory (``val`` marks the evaluation rows, stored last, in their order); its index.
    For small sets: tests, and converting a ``LatentSet``."""
    n = int(tensors["val"].shape[0])
    order = sorted(range(n), key=lambda i: float(tensors["val"][i]))  # stable: each part keeps its order
    for key in root.list(base):
        root.delete(key)  # written whole, never resumed: nothing of an earlier store stays
    writer = ShardWriter(root, base, index.get("fingerprint", {}), shard_clips, [])
    for pos, i in enumerate(order, 1):
        row = {k: v[i] for k, v in tensors.items() if k != "null_context"}
        if writer.add(clip_ids[i], captions[i], row):
            writer.flush(pos)
    writer.flush(n)
    return writer.finish({**index, "context": "context" in tensors}, tensors.get("null_context"))
