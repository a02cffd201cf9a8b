"""The intake policy: what a hostile manifest cannot make the intake read, and what never leaves it (secrets)."""

import os
import shutil
import time

import pandas as pd
import pytest

from curation import ingest
from svdpipe.config_schema import IngestConfig
from svdpipe.sources import FetchError, RefusedAddress, fetch, list_inputs, redact_uri, scrub
from svdpipe.storage import open_storage


def _ingest(root, inputs, cfg):
    todo, _ = ingest.plan_batches(root, inputs, inputs.refused)
    for batch in todo:
        ingest.ingest_batch(root, batch, cfg, progress=False)
    return ingest.consolidate(root)


def test_manifest_cannot_reach_outside_its_folder(corpus, tmp_path):
    folder, truth = corpus
    video = next(iter(truth["videos"]))
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes((folder / video).read_bytes())  # a real video, so only the policy stops it
    mdir = tmp_path / "manifests"
    (mdir / "sub").mkdir(parents=True)
    shutil.copy(folder / video, mdir / "sub" / "ok.mp4")
    os.symlink(outside / "secret.mp4", mdir / "link.mp4")
    entries = {
        "/etc/passwd": "outside the manifest's folder",
        str(outside / "secret.mp4"): "outside the manifest's folder",
        "../private/secret.mp4": "outside the manifest's folder",
        "sub/../../private/secret.mp4": "outside the manifest's folder",
        "link.mp4": "outside the manifest's folder",  # a symlink is followed before the check
        "file:///etc/passwd": "file:// URLs are not read",
        "ftp://example.org/v.mp4": "unsupported scheme ftp://",
    }
    manifest = mdir / "m.csv"
    pd.DataFrame({"url": [*entries, "sub/./ok.mp4"]}).to_csv(manifest, index=False)
    inputs = list_inputs(str(manifest))
    root = open_storage(tmp_path / "root")
    frame = _ingest(root, inputs, IngestConfig(workers=1))
    assert len(frame) == len(entries) + 1
    rows = frame.set_index("source_uri")
    for entry, why in entries.items():
        assert rows.loc[entry, "status"] == "rejected" and why in rows.loc[entry, "reason"], entry
        assert pd.isna(rows.loc[entry, "stored_key"]) and rows.loc[entry, "video_id"] == ""
    assert rows.loc[str(mdir / "sub" / "ok.mp4"), "status"] == "accepted"
    assert root.list("quarantine") == []  # nothing read from a refused entry is kept
    assert len(root.list("raw")) == 1


def test_folder_source_refuses_links_out_of_it(corpus, tmp_path):
    folder, truth = corpus
    video = next(iter(truth["videos"]))
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(folder / video, src / "in.mp4")
    os.symlink("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd", src / "escape.mp4")
    inputs = list_inputs(str(src))
    assert inputs.refused == {str(src / "escape.mp4"): "refused: a link to a file outside the source folder"}
    frame = _ingest(open_storage(tmp_path / "root"), inputs, IngestConfig(workers=1))
    assert dict(zip(frame["source_uri"].str.rsplit("/", n=1).str[-1], frame["status"])) == {
        "escape.mp4": "rejected", "in.mp4": "accepted"}


def test_s3_manifest_names_no_local_file(bucket):
    store = open_storage(f"s3://{bucket}/in")
    store.write_text("m.csv", "url\n/etc/passwd\nclips/a.mp4\n../../other/b.mp4\n")
    inputs = list_inputs(f"s3://{bucket}/in/m.csv")
    assert inputs.refused == {
        "/etc/passwd": "refused: a manifest on S3 names only URLs or keys under its own prefix",
        "../../other/b.mp4": "refused: a manifest on S3 names only URLs or keys under its own prefix"}
    assert f"s3://{bucket}/in/clips/a.mp4" in inputs


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_hosts_are_refused_before_any_connection(http_root, tmp_path, host):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        url = f"http://{host}:{listener.getsockname()[1]}/v.mp4"
        with pytest.raises(RefusedAddress, match=r"resolves to .* \(loopback\).*ingest.allow_private_hosts"):
            fetch(url, tmp_path / "o.mp4", max_bytes=1 << 20, timeout_s=5, retries=3)
        with pytest.raises(BlockingIOError):
            listener.accept()  # refused at connect time: nothing ever connected
    folder, base = http_root  # allowed, the same host serves
    (folder / "v.mp4").write_bytes(b"v" * 100)
    assert fetch(base.replace("127.0.0.1", host) + "/v.mp4", tmp_path / "o.mp4", max_bytes=1 << 20, timeout_s=5,
                 retries=0, allow_private=True).read_bytes() == b"v" * 100


@pytest.mark.parametrize("ip, kind", [("10.1.2.3", "private"), ("169.254.169.254", "link-local"),
                                      ("224.0.0.1", "multicast"), ("::1", "loopback"), ("fd00::1", "private"),
                                      ("::ffff:192.168.0.1", "private"), ("0.0.0.0", "unspecified")])
def test_every_non_public_address_kind_is_refused(tmp_path, ip, kind):
    host = f"[{ip}]" if ":" in ip else ip
    with pytest.raises(RefusedAddress, match=f"\\({kind}\\)"):
        fetch(f"http://{host}:9/v.mp4", tmp_path / "o.mp4", max_bytes=100, timeout_s=1, retries=0)


def test_redirects_are_checked_hop_by_hop(http_root, tmp_path):
    folder, base = http_root
    (folder / "v.mp4").write_bytes(b"v" * 100)
    got = fetch(f"{base}/redirect/{base}/v.mp4", tmp_path / "o.mp4", max_bytes=1 << 20, timeout_s=5, retries=0,
                allow_private=True)
    assert got.read_bytes() == b"v" * 100
    with pytest.raises(FetchError, match="refused"):  # a redirect cannot reach the local disk
        fetch(f"{base}/redirect/file:///etc/passwd", tmp_path / "o2.mp4", max_bytes=1 << 20, timeout_s=5,
              retries=0, allow_private=True)
    loop = f"{base}/redirect/" * 6 + f"{base}/v.mp4"  # six redirects in a row
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(loop, tmp_path / "o3.mp4", max_bytes=1 << 20, timeout_s=5, retries=0, allow_private=True)


def test_a_trickling_server_cannot_hold_the_download_past_its_deadline(http_root, tmp_path):
    folder, base = http_root
    (folder / "v.mp4").write_bytes(b"v" * 2000)  # 100 s at one byte per 50 ms; every read returns in time
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"did not finish within 1 s \(ingest.download_deadline_s\)"):
        fetch(f"{base}/trickle/v.mp4", tmp_path / "o.mp4", max_bytes=1 << 20, timeout_s=30, retries=3,
              deadline_s=1.0, allow_private=True)
    assert time.monotonic() - start < 10  # the deadline, not the 100 s transfer or a retry, ended it
    assert not list(tmp_path.glob("o.mp4*"))


def test_redaction():
    url = "https://alice:pw1234@b.example.org/v.mp4?X-Amz-Credential=AKIAXYZ%2F2024&X-Amz-Signature=abcd1234&w=640"
    shown = redact_uri(url)
    assert shown == "https://***@b.example.org/v.mp4?X-Amz-Credential=***&X-Amz-Signature=***&w=640"
    msg = f"HTTPSConnectionPool: Max retries exceeded with url: /v.mp4?X-Amz-Signature=abcd1234 ({url}) AKIAXYZ/2024"
    clean = scrub(msg, url)
    for secret in ("pw1234", "alice", "abcd1234", "AKIAXYZ"):
        assert secret not in clean
    assert redact_uri("/data/v.mp4") == "/data/v.mp4" and redact_uri("s3://b/k.mp4") == "s3://b/k.mp4"


def test_url_secrets_reach_no_table_log_mlflow_or_dagster_record(corpus, http_root, cli, tmp_path):
    """`svdpipe ingest` of a manifest whose URLs carry credentials: they are used, and shown nowhere."""
    folder, truth = corpus
    www, base = http_root
    name = next(iter(truth["videos"]))
    shutil.copy(folder / name, www / name)
    secrets = ["hunter2pw", "AKIAEXAMPLEKEY", "sig0123456789abcdef", "tok-0123-secret"]
    auth = base.replace("http://", f"http://alice:{secrets[0]}@")
    good = f"{auth}/{name}?X-Amz-Credential={secrets[1]}&X-Amz-Signature={secrets[2]}&w=1"
    bad = f"{base}/missing.mp4?access_token={secrets[3]}"
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"url": [good, bad]}).to_csv(manifest, index=False)
    root = tmp_path / "data"
    proc = cli("-vv", "ingest", str(manifest), "--data-root", str(root), "--set", "ingest.allow_private_hosts=true",
               "--set", "ingest.download_retries=0")
    frame = pd.read_parquet(root / "metadata/videos.parquet")
    assert sorted(frame["status"]) == ["accepted", "rejected"]  # the credentials were used to fetch
    assert "HTTP 404" in frame.loc[frame["status"] == "rejected", "reason"].item()
    assert "***" in frame["source_uri"].str.cat()
    places = {"stdout/stderr": (proc.stdout + proc.stderr).encode()}
    for base_dir in (root, tmp_path / "dagster_home", tmp_path):
        for path in base_dir.rglob("*"):
            # The batch's work order keeps the URLs as given (a resumed batch must fetch them): not shown anywhere.
            if path.is_file() and path.name != "inputs.json" and path != manifest and "www" not in path.parts:
                places[str(path)] = path.read_bytes()
    assert any("mlflow" in p for p in places) and any("dagster_home" in p for p in places)
    leaks = [(where, s) for where, data in places.items() for s in secrets if s.encode() in data]
    assert leaks == []
