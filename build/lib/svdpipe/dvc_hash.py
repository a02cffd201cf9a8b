"""DVC 3 content hashes of data-root folders and files, so Dagster metadata and MLflow runs name the DVC version.

``dir_hash`` gives the ``md5: <hex>.dir`` that ``dvc add`` / ``dvc repro`` write to ``.dvc`` files and
``dvc.lock`` for a tracked directory, ``file_hash`` the ``md5`` of a tracked file. Both are computed with DVC's
own library (``dvc_data``): a local folder is hashed by ``dvc_data.hashfile.build`` exactly as ``dvc add``
builds it; a folder on an S3 root is streamed file by file through the same md5 hasher and assembled into a
``dvc_data`` ``Tree``, whose digest is the directory hash (DVC 3 hashes a file's content, md5, wherever it is).

A directory hash depends only on the relative paths and contents of its files (not on timestamps or
permissions). ``.dvcignore`` patterns are not applied: hash folders that DVC tracks whole (the stage outputs
in dvc.yaml), as the pipeline does.
"""

from __future__ import annotations

from pathlib import Path

from svdpipe.storage import LocalStorage, Storage

__all__ = ["dir_hash", "dvc_hashes", "file_hash"]

_ALGO = "md5"  # DVC 3 outputs: md5 of the content (DVC 2's "md5-dos2unix" only for legacy .dvc files)


def _local_path(path_or_storage: str | Path | Storage, prefix: str) -> Path | None:
    if isinstance(path_or_storage, LocalStorage):
        return path_or_storage.local_path(prefix) if prefix.strip("/") else path_or_storage.path
    if isinstance(path_or_storage, Storage):
        return None
    return Path(path_or_storage).expanduser().resolve() / prefix.strip("/")


def _memory_odb():
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import MemoryFileSystem

    return HashFileDB(MemoryFileSystem(), "memory://svdpipe-dvc-hash")


def dir_hash(path_or_storage: str | Path | Storage, prefix: str = "") -> str:
    """DVC 3's hash of the directory ``prefix`` under a local path or a ``Storage`` root: ``<md5>.dir``.

    Local folders (a path, or a ``LocalStorage``) are hashed by DVC's own tree builder; other storages (S3) by
    streaming every file under ``prefix`` once. Raises ``FileNotFoundError`` for a missing or empty folder
    (DVC cannot track an empty directory from an object store either).
    """
    local = _local_path(path_or_storage, prefix)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"no directory {local}")
        from dvc_data.hashfile.build import build
        from dvc_objects.fs.local import LocalFileSystem

        _, _, obj = build(_memory_odb(), str(local), LocalFileSystem(), _ALGO, dry_run=True)
        return obj.hash_info.value
    return _storage_tree(path_or_storage, prefix).hash_info.value


def _storage_tree(storage: Storage, prefix: str):
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    base = prefix.strip("/")
    keys = [k for k in storage.list(base) if k != base]
    if not keys:
        raise FileNotFoundError(f"no files under {storage.uri(base)}")
    tree = Tree()
    for key in keys:
        rel = key[len(base) + 1:] if base else key
        tree.add(tuple(rel.split("/")), Meta(size=storage.size(key)), HashInfo(_ALGO, _stream_md5(storage, key)))
    tree.digest()
    return tree


def _stream_md5(storage: Storage, key: str) -> str:
    from dvc_data.hashfile.hash import fobj_md5

    client = getattr(storage, "client", None)
    if client is not None and hasattr(storage, "bucket"):  # S3: stream the body, never the whole object in memory
        body = client.get_object(Bucket=storage.bucket, Key=storage._k(key))["Body"]
        try:
            return fobj_md5(body, name=_ALGO)
        finally:
            body.close()
    import io

    return fobj_md5(io.BytesIO(storage.read_bytes(key)), name=_ALGO)


def file_hash(path_or_storage: str | Path | Storage, key: str = "") -> str:
    """DVC 3's md5 of one file: a local path (``key`` relative to it, or empty) or ``key`` of a Storage root."""
    local = _local_path(path_or_storage, key)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"no file {local}")
        from dvc_data.hashfile.hash import file_md5
        from dvc_objects.fs.local import LocalFileSystem

        return file_md5(str(local), LocalFileSystem(), name=_ALGO)
    if not path_or_storage.exists(key):
        raise FileNotFoundError(f"no file {path_or_storage.uri(key)}")
    return _stream_md5(path_or_storage, key)


def dvc_hashes(storage: Storage, prefixes: dict[str, str]) -> dict[str, str]:
    """``{name: hash}`` for Dagster metadata / MLflow tags: a folder's ``dir_hash``, a file's ``file_hash``.

    ``prefixes`` maps a name (``curated/svd``) to a key under ``storage``; keys that do not exist are left out.
    """
    out = {}
    for name, key in prefixes.items():
        try:
            out[name] = file_hash(storage, key) if storage.exists(key) else dir_hash(storage, key)
        except FileNotFoundError:
            continue
    return out
