"""A stage's DeepSpeed checkpoints: where they live, how every rank saves and resumes them, which are kept.

Their home is under the data root, local or S3, so a checkpoint belongs to the data it was trained on::

    ROOT/checkpoints/<variant>/stage<N>/
        step<n>/            one tag per checkpoint: DeepSpeed's files and the EMA's ema.safetensors
        latest              the newest complete tag (written last)
        fingerprint.json    the inputs these checkpoints belong to: others are deleted, never resumed
        mlflow_run.json     the stage's MLflow run, continued on resume

DeepSpeed reads and writes a file system. On a local root it works in the home itself (several nodes need it on a
shared file system). On S3 it works in a node-local cache, ``<project home>/.cache/checkpoints/<hash of the
root>/<variant>/stage<N>``: every rank saves its part there, each node uploads its own files (ZeRO shards are per
rank), and a resume downloads the whole tag to every node. A restarted node need not hold the same ranks as
before (a c10d rendezvous assigns node ranks afresh) and loading ZeRO reads every rank's shard, so the root's copy
is the one that counts; the cache is scratch, emptied when a stage starts.

Order across ranks, for one save:

1. the tag is cleared (each node's cache by its first rank, the root's copy by rank 0), so a tag saved again after
   a restart, perhaps by another world size, keeps no stale shard; barrier;
2. every rank saves its part (rank 0 the EMA first); barrier: every part is on a disk;
3. on S3, each node's first rank uploads the files its node wrote; barrier;
4. rank 0 writes ``latest`` (so ``latest`` only ever names a complete checkpoint) and deletes tags beyond the
   ``keep`` newest; each node's first rank does the same in its cache; barrier.

Every rank reads the step to resume from the root's ``latest``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

from svdpipe.storage import LocalStorage, Storage

__all__ = ["EMA_FILE", "Checkpoints", "as_checkpoints", "cache_folder", "for_stage", "tag_step"]

EMA_FILE = "ema.safetensors"
LATEST = "latest"
_TAG = re.compile(r"step(\d+)")


def tag_step(tag: str) -> int | None:
    """``step12`` -> 12; None for anything that is not a tag."""
    m = _TAG.fullmatch(tag)
    return int(m.group(1)) if m else None


def cache_folder(storage: Storage) -> Path:
    """This node's staging folder for the checkpoints of a data root (one per root URI)."""
    from svdpipe.project import cache_dir

    return cache_dir() / "checkpoints" / hashlib.sha1(storage.root.encode()).hexdigest()[:16]


def _is_first_on_node() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def _rank() -> int:
    return torch.distributed.get_rank()


def _barrier() -> None:
    torch.distributed.barrier()


class Checkpoints:
    """The checkpoints under ``prefix`` of ``storage``; DeepSpeed works in ``local_dir``.

    ``keep``: how many of the newest tags a save leaves (None: all). Methods marked collective are called by every
    rank at the same point."""

    def __init__(self, storage: Storage, prefix: str = "", *, cache: Path | None = None, keep: int | None = None):
        self.storage, self.prefix, self.keep = storage, prefix.strip("/"), keep
        self.remote = not isinstance(storage, LocalStorage)
        if self.remote:
            self.local_dir = Path(cache or cache_folder(storage)) / self.prefix
        else:
            self.local_dir = storage.local_path(self.prefix) if self.prefix else storage.path

    def _k(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str = "") -> str:
        return self.storage.uri(self._k(name) if name else self.prefix)

    # small records beside the tags
    def read_json(self, name: str) -> dict | None:
        key = self._k(name)
        return json.loads(self.storage.read_text(key)) if self.storage.exists(key) else None

    def write_json(self, name: str, value: dict) -> None:
        self.storage.write_text(self._k(name), json.dumps(value))

    def latest(self) -> str | None:
        """The newest complete tag, from the home (not the cache)."""
        key = self._k(LATEST)
        if not self.storage.exists(key):
            return None
        tag = self.storage.read_text(key).strip()
        return tag or None

    def tags(self) -> list[str]:
        """Tags in the home, oldest first (complete or not)."""
        if self.remote:
            names = {k[len(self._k("")):].split("/", 1)[0] for k in self.storage.list(self.prefix)}
        else:
            names = {p.name for p in self.local_dir.glob("step*") if p.is_dir()}
        return sorted((t for t in names if tag_step(t) is not None), key=tag_step)

    def reset(self, fingerprint: str) -> None:
        """Collective, before resuming: checkpoints of other inputs are deleted (they never resume into this run);
        the home is marked with ``fingerprint``; on S3 each node's cache is emptied."""
        if _rank() == 0:
            stored = self.read_json("fingerprint.json")
            if stored is not None and stored.get("fingerprint") != fingerprint:
                self._delete_home()
            self.write_json("fingerprint.json", {"fingerprint": fingerprint})
        if self.remote and _is_first_on_node():
            shutil.rmtree(self.local_dir, ignore_errors=True)
        _barrier()

    def fetch(self, tag: str) -> None:
        """Collective: make ``tag`` complete in every node's ``local_dir`` (downloaded on S3)."""
        if self.remote and _is_first_on_node():
            local = self.local_dir / tag
            shutil.rmtree(local, ignore_errors=True)
            base = self._k(tag) + "/"
            for key in self.storage.list(self._k(tag)):
                dest = local / key[len(base):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                # A name of its own: two nodes sharing one cache folder never write the same temporary file.
                part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
                self.storage.download(key, part)
                os.replace(part, dest)
        _barrier()

    def save(self, engine, tag: str, client_state: dict, ema=None) -> None:
        """Collective: save ``tag`` from every rank, upload it, then point ``latest`` at it and prune."""
        local = self.local_dir / tag
        clears = _is_first_on_node() if self.remote else _rank() == 0  # a local root is one folder for all nodes
        if clears:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True, exist_ok=True)  # also on nodes without rank 0, where DeepSpeed makes none
        if self.remote and _rank() == 0:
            for key in self.storage.list(self._k(tag)):
                self.storage.delete(key)
        _barrier()
        if ema is not None and _rank() == 0:
            ema.save(local / EMA_FILE)  # before the DeepSpeed files: a tag that has them has its EMA
        # latest is ours to write: DeepSpeed's rank 0 would write it before the other ranks have saved.
        engine.save_checkpoint(str(self.local_dir), tag=tag, client_state=client_state, save_latest=False)
        _barrier()
        if self.remote:
            if _is_first_on_node():
                for path in sorted(p for p in local.rglob("*") if p.is_file()):
                    self.storage.upload(path, self._k(f"{tag}/{path.relative_to(local).as_posix()}"))
            _barrier()
        if _rank() == 0:
            self.storage.write_text(self._k(LATEST), tag)
        self._prune(tag)
        _barrier()

    def _prune(self, latest: str) -> None:
        """Tags beyond the ``keep`` newest up to ``latest`` go, as do tags after it (parts of a save cut short):
        from the home by rank 0, from each node's cache by its first rank."""
        if self.keep is None:
            return
        newest = tag_step(latest)

        def dropped(tags: list[str]) -> list[str]:
            upto = [t for t in tags if tag_step(t) <= newest]
            return upto[:-self.keep] + [t for t in tags if tag_step(t) > newest]

        if _rank() == 0:
            for tag in dropped(self.tags()):
                if self.remote:
                    for key in self.storage.list(self._k(tag)):
                        self.storage.delete(key)
                else:
                    shutil.rmtree(self.local_dir / tag, ignore_errors=True)
        if self.remote and _is_first_on_node():
            here = sorted((p.name for p in self.local_dir.glob("step*") if tag_step(p.name) is not None),
                          key=tag_step)
            for tag in dropped(here):
                shutil.rmtree(self.local_dir / tag, ignore_errors=True)

    def _delete_home(self) -> None:
        if self.remote:
            for key in self.storage.list(self.prefix):
                self.storage.delete(key)
        else:
            shutil.rmtree(self.local_dir, ignore_errors=True)


def for_stage(root: Storage, variant: str, stage: int, keep: int | None = None) -> Checkpoints:
    """The checkpoints of one stage of one variant: ``ROOT/checkpoints/<variant>/stage<N>``."""
    return Checkpoints(root, f"checkpoints/{variant}/stage{stage}", keep=keep)


def as_checkpoints(where: Checkpoints | str | Path) -> Checkpoints:
    """A ``Checkpoints`` as is; a plain folder as checkpoints kept in it."""
    return where if isinstance(where, Checkpoints) else Checkpoints(LocalStorage(where))
