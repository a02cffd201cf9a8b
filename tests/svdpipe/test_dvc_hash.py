"""dir_hash / file_hash give the hashes DVC 3 itself records, for a local folder and for the same files in S3."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from svdpipe.dvc_hash import dir_hash, dvc_hashes, file_hash
from svdpipe.storage import LocalStorage, open_storage

FILES = {
    "a.txt": b"hello\n",
    "crlf.txt": b"windows\r\nline endings\r\n",  # DVC 3 hashes bytes as they are (no dos2unix)
    "empty": b"",
    "sub/deeper/b.bin": bytes(range(256)) * 4000,  # over 1 MiB: more than one read chunk
    "sub/c.json": b'{"x": 1}',
}


def _dvc(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> tuple[Path, dict]:
    """A DVC repo (no git) with ``data/`` and ``data/a.txt`` tracked by ``dvc add``; returns it and the .dvc outs."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    for rel, data in FILES.items():
        (repo / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / "data" / rel).write_bytes(data)
    (repo / "single.txt").write_bytes(FILES["crlf.txt"])
    _dvc(["init", "--no-scm", "-q"], repo)
    _dvc(["add", "-q", "data", "single.txt"], repo)
    outs = {name: yaml.safe_load((repo / f"{name}.dvc").read_text())["outs"][0] for name in ("data", "single.txt")}
    return repo, outs


def test_dir_hash_matches_dvc_add(dvc_repo):
    repo, outs = dvc_repo
    expected = outs["data"]["md5"]
    assert expected.endswith(".dir")
    assert dir_hash(repo / "data") == expected
    assert dir_hash(str(repo), "data") == expected
    assert dir_hash(LocalStorage(repo), "data") == expected


def test_file_hash_matches_dvc_add(dvc_repo):
    repo, outs = dvc_repo
    assert file_hash(repo / "single.txt") == outs["single.txt"]["md5"]
    assert file_hash(LocalStorage(repo), "single.txt") == outs["single.txt"]["md5"]


def test_dir_hash_of_the_same_files_in_s3(dvc_repo, bucket):
    repo, outs = dvc_repo
    store = open_storage(f"s3://{bucket}/root")
    for rel in FILES:
        store.upload(repo / "data" / rel, f"curated/v/{rel}")
    store.upload(repo / "single.txt", "single.txt")
    assert dir_hash(store, "curated/v") == outs["data"]["md5"]
    assert dir_hash(store, "curated/v/") == outs["data"]["md5"]
    assert file_hash(store, "single.txt") == outs["single.txt"]["md5"]
    assert dvc_hashes(store, {"dataset": "curated/v", "file": "single.txt", "missing": "curated/none"}) == {
        "dataset": outs["data"]["md5"], "file": outs["single.txt"]["md5"]}


def test_hash_depends_on_content_and_names_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        for rel, data in FILES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    os.utime(b / "a.txt", (0, 0))
    assert dir_hash(a) == dir_hash(b)
    (b / "a.txt").write_bytes(b"hello!\n")
    assert dir_hash(a) != dir_hash(b)
    (b / "a.txt").write_bytes(FILES["a.txt"])
    (b / "a.txt").rename(b / "renamed.txt")
    assert dir_hash(a) != dir_hash(b)


def test_missing_paths_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        dir_hash(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        file_hash(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError):
        dir_hash(LocalStorage(tmp_path), "nope")
