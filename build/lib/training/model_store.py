"""Model folders under the data root: ``models/<variant>/stage{1,2,3}``, on a local disk or in S3.

diffusers reads and writes folders, so a model travels as a folder: ``put_dir`` uploads one under a key
(writing ``svdpipe_model.json`` last, so a half-uploaded model is never taken for a complete one) and
``get_dir`` gives a local folder to load from (the folder itself on a local root, a downloaded copy on S3).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from svdpipe.storage import LocalStorage, Storage

__all__ = ["MARKER", "get_dir", "model_key", "put_dir", "read_info"]

MARKER = "svdpipe_model.json"


def model_key(variant: str, stage: int | str) -> str:
    return f"models/{variant}/stage{stage}"


def put_dir(root: Storage, local: str | Path, key: str, info: dict) -> None:
    local = Path(local)
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != MARKER):
        root.upload(path, f"{key}/{path.relative_to(local).as_posix()}")
    root.write_text(f"{key}/{MARKER}", json.dumps(info, indent=1))


def read_info(root: Storage, key: str) -> dict | None:
    """The model's ``svdpipe_model.json`` (run id, dataset version, losses), or None if it is not complete."""
    return json.loads(root.read_text(f"{key}/{MARKER}")) if root.exists(f"{key}/{MARKER}") else None


def get_dir(root: Storage, key: str, cache: str | Path | None = None) -> Path:
    if read_info(root, key) is None:
        raise FileNotFoundError(f"no complete model at {root.uri(key)}: train that stage first (svdpipe train)")
    if isinstance(root, LocalStorage):
        return root.local_path(key)
    dest = Path(cache or tempfile.mkdtemp(prefix="svdpipe-model-")) / key
    for k in root.list(key):
        root.download(k, dest / Path(k).relative_to(key))
    return dest
