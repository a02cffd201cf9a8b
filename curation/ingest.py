"""Raw-video ingestion: every input becomes one row of the videos table, accepted or rejected with a reason.

Layout under the data root::

    metadata/batches/<batch>/inputs.json        the batch's input URIs (written when the batch is planned)
    metadata/batches/<batch>/results/<h>.json   one finished input (so a killed batch resumes where it stopped)
    metadata/batches/<batch>/videos.parquet     the batch's rows, written when every input is done
    metadata/videos.parquet                     all batches, one row per input
    raw/<video_id><ext>                         accepted videos, content-addressed (a second copy is never made)
    quarantine/<video_id><ext>                  rejected inputs, kept for inspection

Idempotence: an input URI already in any batch is not planned again; content already accepted under another URI
is rejected as a duplicate (so accepted ``video_id`` values stay unique) and not copied again.

Policy: an input the intake policy refused (``svdpipe.sources``) is a rejected row with its reason, and nothing is
read from it. Tables show ``redact_uri`` of each input and reasons are scrubbed of its secrets; only the batch's
work order (``inputs.json``) keeps the URIs as given, because a resumed batch must fetch them again.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pandas as pd

from curation.probe import content_hash, probe_video
from svdpipe.config_schema import IngestConfig
from svdpipe.sources import FetchError, fetch, redact_uri, scrub
from svdpipe.storage import Storage, open_storage

VIDEOS_KEY = "metadata/videos.parquet"
BATCHES = "metadata/batches"

# The data contract of metadata/videos.parquet (docs/architecture.md), then our additions.
VIDEO_COLUMNS = {
    "video_id": "string",
    "source_uri": "string",
    "status": "string",
    "reason": "string",
    "duration_s": "float64",
    "fps": "float64",
    "width": "Int64",
    "height": "Int64",
    "codec": "string",
    "num_frames": "Int64",
    "size_bytes": "Int64",
    "stored_key": "string",
    "batch": "string",
    "ingested_at": "string",
}


def batch_key(batch: str, name: str) -> str:
    return f"{BATCHES}/{batch}/{name}"


def _input_key(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:20]


def new_batch_id(uris: list[str]) -> str:
    """Readable in the Dagster UI (time first) and unique for its inputs."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{hashlib.sha1(json.dumps(sorted(uris)).encode()).hexdigest()[:8]}"


def known_batches(root: Storage) -> dict[str, list[str]]:
    """Every planned batch and its input URIs."""
    out = {}
    for key in root.list(BATCHES):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "inputs.json":
            out[parts[2]] = json.loads(root.read_text(key))["inputs"]
    return out


def is_complete(root: Storage, batch: str) -> bool:
    return root.exists(batch_key(batch, "videos.parquet"))


def plan_batches(root: Storage, uris: list[str], refused: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Return (batches to run, inputs newly planned). Unfinished batches are resumed; known URIs are skipped.

    ``refused`` (URI -> reason, from ``list_inputs``) travels with the batch: those inputs become rejected rows.
    """
    batches = known_batches(root)
    seen = {u for inputs in batches.values() for u in inputs}
    new = [u for u in dict.fromkeys(uris) if u not in seen]
    todo = sorted(b for b in batches if not is_complete(root, b))
    if new:
        batch = new_batch_id(new)
        order = {"inputs": new, "refused": {u: r for u, r in (refused or {}).items() if u in set(new)}}
        root.write_text(batch_key(batch, "inputs.json"), json.dumps(order, indent=1))
        todo.append(batch)
    return todo, new


def _suffix(uri: str) -> str:
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
    return suffix if suffix and len(suffix) <= 6 else ".bin"


def ingest_one(uri: str, root_uri: str, cfg: IngestConfig, batch: str, refused: str | None = None) -> dict:
    """Fetch, hash, probe and store one input; never raises for bad input. A refused input is not touched."""
    root = open_storage(root_uri)
    row: dict = {"source_uri": redact_uri(uri), "batch": batch, "ingested_at": datetime.now(timezone.utc).isoformat()}
    if refused:
        return {**row, "video_id": "", "status": "rejected", "reason": refused}
    with tempfile.TemporaryDirectory(prefix="svdpipe-ingest-") as tmp:
        try:
            local = fetch(uri, Path(tmp) / f"input{_suffix(uri)}", cfg.max_input_bytes, cfg.download_timeout_s,
                          cfg.download_retries, deadline_s=cfg.download_deadline_s,
                          allow_private=cfg.allow_private_hosts)
        except FetchError as e:
            return {**row, "video_id": "", "status": "rejected", "reason": scrub(str(e), uri)}
        row["size_bytes"] = local.stat().st_size
        row["video_id"] = content_hash(local)
        probe = probe_video(local, cfg.min_decoded_fraction)
        row.update(probe.as_row())
        row["reason"] = scrub(row["reason"], uri)
        row["status"] = "accepted" if probe.ok else "rejected"
        folder = "raw" if probe.ok else "quarantine"
        key = f"{folder}/{row['video_id']}{_suffix(uri)}"
        if not root.exists(key):
            root.upload(local, key)
        row["stored_key"] = key
    return row


def _run_one(args: tuple) -> tuple[str, dict]:
    uri, root_uri, cfg_json, batch, refused = args
    return uri, ingest_one(uri, root_uri, IngestConfig.model_validate_json(cfg_json), batch, refused)


def to_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(VIDEO_COLUMNS))
    for col, dtype in VIDEO_COLUMNS.items():
        frame[col] = frame[col].astype(dtype)
    frame["reason"] = frame["reason"].fillna("")
    return frame


def read_optional(root: Storage, key: str) -> pd.DataFrame | None:
    """A parquet table under the data root, or None when it has not been written."""
    return pd.read_parquet(io.BytesIO(root.read_bytes(key))) if root.exists(key) else None


def read_table(root: Storage, key: str = VIDEOS_KEY) -> pd.DataFrame:
    frame = read_optional(root, key)
    return to_frame([]) if frame is None else frame


def write_table(root: Storage, key: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    root.write_bytes(key, buf.getvalue())


def accepted_ids(root: Storage, exclude_batch: str | None = None) -> dict[str, str]:
    """video_id -> source_uri for content accepted by finished batches (other than ``exclude_batch``)."""
    out: dict[str, str] = {}
    for batch in sorted(known_batches(root)):
        if batch == exclude_batch or not is_complete(root, batch):
            continue
        frame = read_table(root, batch_key(batch, "videos.parquet"))
        for vid, uri in frame.loc[frame["status"] == "accepted", ["video_id", "source_uri"]].itertuples(index=False):
            out.setdefault(vid, uri)
    return out


def ingest_batch(root: Storage, batch: str, cfg: IngestConfig, progress: bool = True) -> pd.DataFrame:
    """Ingest one planned batch and write its table. Inputs finished by an earlier, killed run are not redone."""
    from tqdm import tqdm

    order = json.loads(root.read_text(batch_key(batch, "inputs.json")))
    uris, refused = order["inputs"], order.get("refused", {})
    results: dict[str, dict] = {}
    for uri in uris:
        key = batch_key(batch, f"results/{_input_key(uri)}.json")
        if root.exists(key):
            results[uri] = json.loads(root.read_text(key))
    todo = [u for u in uris if u not in results]
    bar = tqdm(total=len(uris), initial=len(results), desc=f"ingest {batch}", unit="video", disable=not progress)

    def done(uri: str, row: dict) -> None:
        root.write_text(batch_key(batch, f"results/{_input_key(uri)}.json"), json.dumps(row))
        results[uri] = row
        bar.update(1)

    args = [(u, root.root, cfg.model_dump_json(), batch, refused.get(u)) for u in todo]
    if cfg.workers > 1 and len(todo) > 1:
        # spawn: a forked child of a threaded parent (Dagster, boto3) can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=ctx) as pool:
            for uri, row in pool.map(_run_one, args):
                done(uri, row)
    else:
        for a in args:
            done(*_run_one(a))
    bar.close()

    # Duplicate content: the first URI (earlier batches first, then sorted order) keeps the accepted row.
    owners = accepted_ids(root, exclude_batch=batch)
    rows = []
    for uri in sorted(results):
        row = dict(results[uri])
        if row.get("status") == "accepted":
            if row["video_id"] in owners:
                row.update(status="rejected", reason=f"duplicate content: same bytes as {owners[row['video_id']]}")
            else:
                owners[row["video_id"]] = row["source_uri"]
        rows.append(row)
    frame = to_frame(rows)
    write_table(root, batch_key(batch, "videos.parquet"), frame)
    return frame


def consolidate(root: Storage) -> pd.DataFrame:
    """Rebuild ``metadata/videos.parquet`` from every finished batch; one row per input URI."""
    frames = [read_table(root, batch_key(b, "videos.parquet")) for b in sorted(known_batches(root))
              if is_complete(root, b)]
    frame = pd.concat(frames, ignore_index=True) if frames else to_frame([])
    frame = frame.drop_duplicates(subset=["source_uri"], keep="first").reset_index(drop=True)
    write_table(root, VIDEOS_KEY, frame)
    return frame


def summarize(frame: pd.DataFrame) -> dict:
    accepted = frame[frame["status"] == "accepted"]
    return {
        "inputs": int(len(frame)),
        "accepted": int(len(accepted)),
        "rejected": int((frame["status"] == "rejected").sum()),
        "hours_accepted": round(float(accepted["duration_s"].fillna(0).sum()) / 3600, 4),
    }

