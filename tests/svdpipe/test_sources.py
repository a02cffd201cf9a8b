import pandas as pd
import pytest

from svdpipe.sources import FetchError, fetch, list_inputs, read_manifest
from svdpipe.storage import open_storage

IGNORE = (".*", "*.json")


def test_folder_listing_respects_ignore_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["a.mp4", "sub/b.mkv", "notes.txt", "truth.json", ".hidden.mp4"]:
        (tmp_path / name).write_bytes(b"x")
    found = [p.split("/")[-1] for p in list_inputs(str(tmp_path), IGNORE)]
    assert found == ["a.mp4", "notes.txt", "b.mkv"]  # a text file is an input (and will be rejected)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        list_inputs(str(tmp_path / "nope"))


def test_s3_listing(bucket):
    store = open_storage(f"s3://{bucket}/raw")
    store.write_bytes("x/a.mp4", b"1")
    store.write_bytes("b.mp4", b"2")
    store.write_bytes("meta.json", b"{}")
    assert list_inputs(f"s3://{bucket}/raw", IGNORE) == [f"s3://{bucket}/raw/b.mp4", f"s3://{bucket}/raw/x/a.mp4"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_urls_and_relative_paths(tmp_path, fmt):
    frame = pd.DataFrame({"url": ["https://example.org/v.mp4", "clips/local.mp4", "s3://b/k.mp4", None],
                          "caption": ["a", "b", "c", "d"]})
    path = tmp_path / f"m.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    urls = read_manifest(str(path))
    assert urls == sorted(["https://example.org/v.mp4", str(tmp_path / "clips/local.mp4"), "s3://b/k.mp4"])
    assert list_inputs(str(path)) == urls


def test_manifest_without_url_column(tmp_path):
    (tmp_path / "m.csv").write_text("path\nx.mp4\n")
    with pytest.raises(ValueError, match="no 'url' column"):
        read_manifest(str(tmp_path / "m.csv"))


def test_http_download(http_root, tmp_path):
    folder, base = http_root
    (folder / "v.mp4").write_bytes(b"v" * 10_000)
    got = fetch(f"{base}/v.mp4", tmp_path / "out.mp4", max_bytes=1 << 20, timeout_s=5, retries=0,
        allow_private=True)
    assert got.read_bytes() == b"v" * 10_000


def test_http_retries_transient_errors(http_root, tmp_path):
    folder, base = http_root
    (folder / "v.mp4").write_bytes(b"v" * 100)
    got = fetch(f"{base}/flaky/2/v.mp4", tmp_path / "out.mp4", max_bytes=1 << 20, timeout_s=5, retries=2,
        allow_private=True)
    assert got.read_bytes() == b"v" * 100
    with pytest.raises(FetchError, match="after 2 attempts: HTTP 503"):
        fetch(f"{base}/flaky/5/v.mp4", tmp_path / "o2.mp4", max_bytes=1 << 20, timeout_s=5, retries=1,
            allow_private=True)


def test_http_client_errors_fail_fast(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{base}/missing.mp4", tmp_path / "o.mp4", max_bytes=1 << 20, timeout_s=5, retries=3,
            allow_private=True)


def test_http_size_limit_declared_and_streamed(http_root, tmp_path):
    folder, base = http_root
    (folder / "big.mp4").write_bytes(b"b" * 50_000)
    with pytest.raises(FetchError, match="declared"):
        fetch(f"{base}/big.mp4", tmp_path / "o.mp4", max_bytes=10_000, timeout_s=5, retries=0,
            allow_private=True)
    with pytest.raises(FetchError, match="more than 10000 bytes"):  # no Content-Length: counted while streaming
        fetch(f"{base}/chunked/big.mp4", tmp_path / "o.mp4", max_bytes=10_000, timeout_s=5, retries=0,
            allow_private=True)
    assert not list(tmp_path.glob("o.mp4*"))


def test_unreachable_host_is_a_fetch_error(tmp_path):
    from infra.s3server import free_port

    with pytest.raises(FetchError, match="after 2 attempts"):
        fetch(f"http://127.0.0.1:{free_port()}/v.mp4", tmp_path / "o.mp4", max_bytes=100, timeout_s=2, retries=1,
              allow_private=True)


def test_local_size_limit(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x" * 100)
    with pytest.raises(FetchError, match="over the 10-byte limit"):
        fetch(str(tmp_path / "v.mp4"), tmp_path / "o", max_bytes=10, timeout_s=1, retries=0)
