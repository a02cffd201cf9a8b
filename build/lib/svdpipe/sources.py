"""Where raw videos come from: a local folder, an ``s3://`` prefix, or a manifest of URLs.

``list_inputs`` turns a source into input URIs; ``fetch`` brings one input to a local file. Failures to fetch are
raised as ``FetchError`` with a message meant for the ``reason`` column, never as a crash of the batch.
"""

from __future__ import annotations

import fnmatch
import io
import shutil
import time
from pathlib import Path, PurePosixPath

import requests

from svdpipe.storage import S3Storage, is_s3, split_s3

MANIFEST_SUFFIXES = (".csv", ".parquet")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FetchError(Exception):
    """An input that could not be brought here; the message becomes its rejection reason."""


def is_url(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _ignored(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def list_inputs(source: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """Every input URI of ``source``, sorted. Files whose name matches an ``ignore`` glob are not inputs."""
    if source.lower().endswith(MANIFEST_SUFFIXES):
        return read_manifest(source)
    if is_s3(source):
        store = S3Storage(source)
        return [store.uri(k) for k in store.list() if not _ignored(PurePosixPath(k).name, ignore)]
    if is_url(source):
        return [source]
    path = Path(source).expanduser().resolve()
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"source {source!r} is neither a folder, an s3:// prefix, a manifest nor a file")
    return sorted(
        str(p) for p in path.rglob("*")
        if p.is_file() and not any(_ignored(part, ignore) for part in p.relative_to(path).parts)
    )


def read_manifest(source: str) -> list[str]:
    """A CSV or Parquet manifest with a ``url`` column (http(s), s3:// or local paths, relative to the manifest)."""
    import pandas as pd

    if is_s3(source):
        bucket, key = split_s3(source)
        parent, _, name = key.rpartition("/")
        handle = io.BytesIO(S3Storage(f"s3://{bucket}/{parent}").read_bytes(name))
    else:
        handle = Path(source).expanduser().resolve()
    frame = pd.read_parquet(handle) if source.lower().endswith(".parquet") else pd.read_csv(handle)
    if "url" not in frame.columns:
        raise ValueError(f"manifest {source!r} has no 'url' column (columns: {', '.join(map(str, frame.columns))})")
    urls = [str(u).strip() for u in frame["url"].dropna() if str(u).strip()]
    if isinstance(handle, Path):  # relative paths in a local manifest are relative to the manifest
        urls = [u if is_url(u) or is_s3(u) or Path(u).is_absolute() else str(handle.parent / u) for u in urls]
    return sorted(dict.fromkeys(urls))


def fetch(uri: str, dest: Path, max_bytes: int, timeout_s: float, retries: int) -> Path:
    """Bring ``uri`` to ``dest`` (local files are used in place) and return the local path."""
    if is_url(uri):
        _download(uri, dest, max_bytes, timeout_s, retries)
        return dest
    if is_s3(uri):
        bucket, key = split_s3(uri)
        parent, _, name = key.rpartition("/")
        store = S3Storage(f"s3://{bucket}/{parent}")
        try:
            size = store.size(name)
        except Exception as e:  # noqa: BLE001 - any S3 failure is this input's reason
            raise FetchError(f"cannot read {uri}: {e}") from e
        if size > max_bytes:
            raise FetchError(f"input is {size} bytes, over the {max_bytes}-byte limit (ingest.max_input_bytes)")
        store.download(name, dest)
        return dest
    path = Path(uri)
    if not path.is_file():
        raise FetchError(f"file vanished before it could be read: {uri}")
    if path.stat().st_size > max_bytes:
        raise FetchError(
            f"input is {path.stat().st_size} bytes, over the {max_bytes}-byte limit (ingest.max_input_bytes)"
        )
    return path


def _download(url: str, dest: Path, max_bytes: int, timeout_s: float, retries: int) -> None:
    """HTTP(S) GET with timeouts, a size limit, and retries with back-off on transient failures only."""
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        try:
            with requests.get(url, stream=True, timeout=(timeout_s, timeout_s)) as r:
                if r.status_code in _RETRY_STATUS:
                    last = f"HTTP {r.status_code}"
                    continue
                if r.status_code >= 400:
                    raise FetchError(f"download failed: HTTP {r.status_code} from {url}")
                declared = int(r.headers.get("Content-Length") or 0)
                if declared > max_bytes:
                    raise FetchError(
                        f"download refused: {declared} bytes declared, over the {max_bytes}-byte limit "
                        "(ingest.max_input_bytes)"
                    )
                got = 0
                part = dest.with_name(dest.name + ".part")
                with open(part, "wb") as f:
                    for chunk in r.iter_content(1024 * 1024):
                        got += len(chunk)
                        if got > max_bytes:
                            part.unlink(missing_ok=True)
                            raise FetchError(
                                f"download aborted: more than {max_bytes} bytes (ingest.max_input_bytes)"
                            )
                        f.write(chunk)
                if declared and got < declared:
                    last = f"connection closed after {got} of {declared} bytes"
                    part.unlink(missing_ok=True)
                    continue
                shutil.move(part, dest)
                return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            last = f"{type(e).__name__}: {e}"
    raise FetchError(f"download failed after {retries + 1} attempts: {last}")
