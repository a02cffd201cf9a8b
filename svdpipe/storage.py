"""One storage interface over a local folder and an S3 prefix.

Keys are POSIX-style paths relative to the root (``metadata/videos.parquet``). Writes are atomic on both
backends: a local write goes to a temporary file in the same folder and is renamed into place; an S3 PUT (or a
multipart upload, completed only at the end) is never visible half-written.

``Storage.lock`` makes one process at a time the writer of a data root (two ``svdpipe curate`` on one root run one
after the other): an ``flock`` on ``<root>/.svdpipe.lock`` locally (released by the kernel if the holder dies); on
S3 a lease object written with a conditional PUT (``If-None-Match``), renewed while held and taken over once it has
expired, or at once when its holder is known dead (killed on this machine). The lock is reentrant within a process,
so a CLI command holding it runs its Dagster steps in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from svdpipe.processes import gone, identity

_CHUNK = 8 * 1024 * 1024
LOCK_KEY = ".svdpipe.lock"  # not a data key: list() never shows it
LEASE_S = 60.0  # an S3 lock not renewed for this long belongs to a dead holder


class LockBusy(Exception):
    """The data root is locked by another process and the caller chose not to wait (longer)."""


_held: dict[str, list] = {}  # root -> [depth, release]; the process's own locks (reentrancy)
_held_guard = threading.Lock()


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _clean_key(key: str) -> str:
    key = key.replace("\\", "/").strip("/")
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    """A data root: ``read_bytes``/``write_bytes``/``upload``/``download``/``list``/``exists``/``copy``."""

    root: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def upload(self, local_path: str | Path, key: str) -> None:
        """Copy a local file to ``key`` atomically."""

    @abstractmethod
    def download(self, key: str, local_path: str | Path) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None: ...

    @contextmanager
    def lock(self, purpose: str, wait_s: float | None = None, poll_s: float = 1.0,
             on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the data root's writer lock. Waits up to ``wait_s`` (None: for ever), telling ``on_wait`` once who
        holds it; raises ``LockBusy`` when the wait runs out."""
        with _held_guard:
            mine = _held.get(self.root)
            if mine:
                mine[0] += 1
        if not mine:
            info = json.dumps({"purpose": purpose, "pid": os.getpid(), "host": socket.gethostname(),
                               "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "token": uuid.uuid4().hex, "process": identity()})
            end = None if wait_s is None else time.monotonic() + wait_s
            told = False
            while (release := self._try_lock(info)) is None:
                holder = self._lock_holder()
                if end is not None and time.monotonic() >= end:
                    raise LockBusy(f"{self.root} is in use by {holder}")
                if not told and on_wait is not None:
                    on_wait(f"waiting for {self.root}: in use by {holder}")
                    told = True
                time.sleep(poll_s)
            with _held_guard:
                _held[self.root] = [1, release]
        try:
            yield
        finally:
            with _held_guard:
                entry = _held[self.root]
                entry[0] -= 1
                last = entry[0] == 0
                if last:
                    del _held[self.root]
            if last:
                entry[1]()

    @abstractmethod
    def _try_lock(self, info: str) -> Callable[[], None] | None:
        """Take the lock without waiting; return its release function, or None when another process holds it."""

    @abstractmethod
    def _lock_holder(self) -> str: ...

    @staticmethod
    def _describe(text: str) -> str:
        try:
            h = json.loads(text)
            return f"{h['purpose']} (pid {h['pid']} on {h['host']}, since {h['since']})"
        except (ValueError, KeyError, TypeError):
            return "another process"

    def uri(self, key: str = "") -> str:
        return self.root.rstrip("/") + ("/" + _clean_key(key) if key else "")

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of ``key``; backends override this to read only those."""
        return self.read_bytes(key)[start:end]

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode())

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode()


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def _p(self, key: str) -> Path:
        return self.path / _clean_key(key)

    def read_bytes(self, key: str) -> bytes:
        return self._p(key).read_bytes()

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with open(self._p(key), "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def _atomic(self, key: str, fill) -> None:
        dst = self._p(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda f: f.write(data))

    def upload(self, local_path: str | Path, key: str) -> None:
        with open(local_path, "rb") as src:
            self._atomic(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def download(self, key: str, local_path: str | Path) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._p(key), local_path)

    def list(self, prefix: str = "") -> list[str]:
        base = self._p(prefix) if prefix.strip("/") else self.path
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".part"):
                    continue  # an atomic write still in flight
                keys.append(Path(dirpath, name).relative_to(self.path).as_posix())
        return sorted(k for k in keys if k != LOCK_KEY)

    def _try_lock(self, info: str) -> Callable[[], None] | None:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_KEY, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)

        def release() -> None:
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

        return release

    def _lock_holder(self) -> str:
        try:
            return self._describe((self.path / LOCK_KEY).read_text())
        except OSError:
            return "another process"

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def size(self, key: str) -> int:
        return self._p(key).stat().st_size

    def delete(self, key: str) -> None:
        self._p(key).unlink(missing_ok=True)

    def copy(self, src_key: str, dst_key: str) -> None:
        self.upload(self._p(src_key), dst_key)

    def local_path(self, key: str) -> Path:
        """Local backends can hand out a path, saving a copy for readers that need a file."""
        return self._p(key)


class S3Storage(Storage):
    """An ``s3://bucket/prefix`` root through boto3; endpoint and credentials from the standard AWS variables."""

    def __init__(self, uri: str, client=None):
        self.bucket, self.prefix = split_s3(uri)
        self.root = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = client or make_s3_client()

    def _k(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        rng = f"bytes={start}-{end - 1}"  # HTTP ranges are inclusive
        return self.client.get_object(Bucket=self.bucket, Key=self._k(key), Range=rng)["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def upload(self, local_path: str | Path, key: str) -> None:
        # upload_file switches to multipart for large files; the object appears only when it completes.
        self.client.upload_file(str(local_path), self.bucket, self._k(key))

    def download(self, key: str, local_path: str | Path) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{local_path}.part"
        self.client.download_file(self.bucket, self._k(key), tmp)
        os.replace(tmp, local_path)

    def _iter(self, prefix: str) -> Iterator[dict]:
        full = self._k(prefix) if prefix.strip("/") else self.prefix
        if full:
            full += "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            yield from page.get("Contents", [])

    def list(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = (obj["Key"][strip:] for obj in self._iter(prefix) if not obj["Key"].endswith("/"))
        return sorted(k for k in keys if k != LOCK_KEY)

    def _try_lock(self, info: str) -> Callable[[], None] | None:
        from botocore.exceptions import ClientError

        key = f"{self.prefix}/{LOCK_KEY}" if self.prefix else LOCK_KEY

        def body() -> bytes:
            return json.dumps({**json.loads(info), "expires": time.time() + LEASE_S}).encode()

        try:  # a conditional PUT: exactly one of several writers creates the object
            etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=body(), IfNoneMatch="*")["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            try:
                held = self.client.get_object(Bucket=self.bucket, Key=key)
                holder = json.loads(held["Body"].read())
                # A holder known dead (killed on this machine) frees it at once; others' leases run out.
                expired = holder.get("expires", 0) < time.time() or gone(holder.get("process", ""))
            except (ClientError, ValueError):
                return None
            if not expired:
                return None
            try:  # the holder died: take its lease over, unless someone else just did
                etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=body(), IfMatch=held["ETag"])["ETag"]
            except ClientError:
                return None
        state = {"etag": etag}
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(LEASE_S / 4):
                try:
                    state["etag"] = self.client.put_object(Bucket=self.bucket, Key=key, Body=body(),
                                                           IfMatch=state["etag"])["ETag"]
                except ClientError:
                    return  # lost (expired and taken over): nothing left to renew

        thread = threading.Thread(target=renew, daemon=True, name="svdpipe-s3-lease")
        thread.start()

        def release() -> None:
            stop.set()
            thread.join()
            try:
                if self.client.head_object(Bucket=self.bucket, Key=key)["ETag"] == state["etag"]:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            except ClientError:
                pass

        return release

    def _lock_holder(self) -> str:
        from botocore.exceptions import ClientError

        key = f"{self.prefix}/{LOCK_KEY}" if self.prefix else LOCK_KEY
        try:
            return self._describe(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode())
        except ClientError:
            return "another process"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def copy(self, src_key: str, dst_key: str) -> None:
        self.client.copy({"Bucket": self.bucket, "Key": self._k(src_key)}, self.bucket, self._k(dst_key))


def make_s3_client():
    """A boto3 S3 client from the standard variables (``AWS_ENDPOINT_URL``, keys, ``AWS_DEFAULT_REGION``)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def open_storage(root: str | Path) -> Storage:
    root = str(root)
    return S3Storage(root) if is_s3(root) else LocalStorage(root)
