"""Where raw videos come from: a local folder, an ``s3://`` prefix, or a manifest of URLs; and the intake policy.

``list_inputs`` turns a source into ``Inputs``: every input URI, plus the entries refused by the policy (each with
its reason; nothing is ever read from them); ``fetch`` brings one input to a local file. Failures to fetch are
raised as ``FetchError`` with a message meant for the ``reason`` column, never as a crash of the batch.

The policy, for what a manifest (or a watched folder) may make us read:

* local paths only inside the manifest's folder (or the source folder), after resolving ``..`` and symlinks;
  a manifest on S3 names no local file; ``file://`` and other schemes are refused;
* http(s) hosts resolving to loopback, private, link-local or multicast addresses are refused unless
  ``ingest.allow_private_hosts`` (checked at connect time, on every redirect: ``svdpipe.downloads``);
* one deadline per download (``ingest.download_deadline_s``);
* secrets in URLs (user info, signature/token/key query values) never reach a table, a log or metadata:
  ``redact_uri`` is what is shown and ``scrub`` cleans error messages.
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
import re
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from svdpipe.downloads import FetchError, RefusedAddress, download
from svdpipe.storage import S3Storage, is_s3, split_s3

__all__ = ["FetchError", "RefusedAddress", "Inputs", "list_inputs", "read_manifest", "fetch", "redact_uri", "scrub"]

MANIFEST_SUFFIXES = (".csv", ".parquet")
# Query parameters whose values are credentials: presigned S3/GCS URLs, Azure SAS, API tokens.
SECRET_PARAM = re.compile(r"sig|token|key|secret|passw|pwd|credential|auth|session|policy", re.I)
HIDDEN = "***"


class Inputs(list):
    """Input URIs (refused entries included, so that each becomes a row) and ``refused``: URI -> reason."""

    def __init__(self, uris=(), refused: dict[str, str] | None = None):
        super().__init__(uris)
        self.refused = dict(refused or {})


def is_url(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _scheme(uri: str) -> str:
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", uri)
    # A Windows drive letter is not a scheme; a one-letter scheme is.
    return match.group(1).lower() if match and len(match.group(1)) > 1 else ""


def redact_uri(uri: str) -> str:
    """``uri`` as it may be shown: no user info, secret-looking query values replaced by ``***``."""
    if _scheme(uri) not in ("http", "https", "s3"):
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{k}={HIDDEN}" if SECRET_PARAM.search(k) else (f"{k}={v}" if "=" in pair else k)
        for pair in parts.query.split("&") if pair
        for k, _, v in [pair.partition("=")]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(uri: str) -> list[str]:
    if _scheme(uri) not in ("http", "https", "s3"):
        return []
    parts = urlsplit(uri)
    found = [parts.netloc.rsplit("@", 1)[0]] if "@" in parts.netloc else []
    found += [p for p in (parts.username, parts.password) if p]
    raw = [pair.partition("=")[2] for pair in parts.query.split("&") if SECRET_PARAM.search(pair.partition("=")[0])]
    found += raw + [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if SECRET_PARAM.search(k)]
    return sorted({s for s in found + [unquote(s) for s in found] if len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, uri: str) -> str:
    """``text`` (an error message, say) with every secret of ``uri`` replaced by ``***``."""
    text = text.replace(uri, redact_uri(uri))
    for secret in _secrets(uri):
        text = text.replace(secret, HIDDEN)
    return text


def _ignored(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def list_inputs(source: str, ignore: tuple[str, ...] = ()) -> Inputs:
    """Every input of ``source``, sorted. Files whose name matches an ``ignore`` glob are not inputs."""
    if source.lower().endswith(MANIFEST_SUFFIXES):
        return read_manifest(source)
    if is_s3(source):
        store = S3Storage(source)
        return Inputs(store.uri(k) for k in store.list() if not _ignored(PurePosixPath(k).name, ignore))
    if is_url(source):
        return Inputs([source])
    path = Path(source).expanduser().resolve()
    if path.is_file():
        return Inputs([str(path)])
    if not path.is_dir():
        raise FileNotFoundError(f"source {source!r} is neither a folder, an s3:// prefix, a manifest nor a file")
    found = sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(_ignored(part, ignore) for part in p.relative_to(path).parts)
    )
    refused = {str(p): "refused: a link to a file outside the source folder" for p in found
               if not _inside(p.resolve(), path)}
    return Inputs([str(p) for p in found], refused)


def _manifest_entry(entry: str, folder: Path | None, s3_parent: str | None) -> tuple[str, str | None]:
    """(input URI, refusal reason or None) for one manifest entry; nothing is read here."""
    scheme = _scheme(entry)
    if scheme in ("http", "https", "s3"):
        return entry, None
    if scheme == "file":
        return entry, "refused: file:// URLs are not read; give a path relative to the manifest"
    if scheme:
        return entry, f"refused: unsupported scheme {scheme}:// (http, https, s3 or a path next to the manifest)"
    if folder is None:  # a manifest on S3: relative keys live beside it, local files are out of reach
        bucket, parent = split_s3(s3_parent)
        key = posixpath.normpath(posixpath.join(parent, entry))
        if entry.startswith("/") or key.split("/")[0] == ".." or (parent and not key.startswith(parent + "/")):
            return entry, "refused: a manifest on S3 names only URLs or keys under its own prefix"
        return f"s3://{bucket}/{key}", None
    path = (folder / Path(entry).expanduser()).resolve()
    if not _inside(path, folder):
        return entry, f"refused: {entry!r} is outside the manifest's folder {folder}"
    return str(path), None


def read_manifest(source: str) -> Inputs:
    """A CSV or Parquet manifest with a ``url`` column: http(s), s3:// or paths inside the manifest's folder."""
    import pandas as pd

    if is_s3(source):
        bucket, key = split_s3(source)
        parent, _, name = key.rpartition("/")
        s3_parent, folder = f"s3://{bucket}/{parent}", None
        handle = io.BytesIO(S3Storage(s3_parent).read_bytes(name))
    else:
        handle = Path(source).expanduser().resolve()
        s3_parent, folder = None, handle.parent
    frame = pd.read_parquet(handle) if source.lower().endswith(".parquet") else pd.read_csv(handle)
    if "url" not in frame.columns:
        raise ValueError(f"manifest {source!r} has no 'url' column (columns: {', '.join(map(str, frame.columns))})")
    entries = [str(u).strip() for u in frame["url"].dropna() if str(u).strip()]
    uris, refused = {}, {}
    for entry in entries:
        uri, reason = _manifest_entry(entry, folder, s3_parent)
        uris[uri] = None
        if reason:
            refused[uri] = reason
    return Inputs(sorted(uris), refused)


def fetch(uri: str, dest: Path, max_bytes: int, timeout_s: float, retries: int, *, deadline_s: float = 3600.0,
          allow_private: bool = False) -> Path:
    """Bring ``uri`` to ``dest`` (local files are used in place) and return the local path."""
    if is_url(uri):
        try:
            download(uri, dest, max_bytes, timeout_s, retries, deadline_s, allow_private)
        except FetchError as e:
            raise type(e)(scrub(str(e), uri)) from None
        return dest
    if is_s3(uri):
        bucket, key = split_s3(uri)
        parent, _, name = key.rpartition("/")
        store = S3Storage(f"s3://{bucket}/{parent}")
        try:
            size = store.size(name)
        except Exception as e:  # noqa: BLE001 - any S3 failure is this input's reason
            raise FetchError(scrub(f"cannot read {uri}: {e}", uri)) from None
        if size > max_bytes:
            raise FetchError(f"input is {size} bytes, over the {max_bytes}-byte limit (ingest.max_input_bytes)")
        store.download(name, dest)
        return dest
    if _scheme(uri):
        raise FetchError(f"refused: unsupported scheme {_scheme(uri)}://")
    path = Path(uri)
    if not path.is_file():
        raise FetchError(f"file vanished before it could be read: {uri}")
    if path.stat().st_size > max_bytes:
        raise FetchError(
            f"input is {path.stat().st_size} bytes, over the {max_bytes}-byte limit (ingest.max_input_bytes)"
        )
    return path
