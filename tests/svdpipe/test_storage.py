import pytest

from svdpipe.storage import LocalStorage, open_storage, split_s3


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_storage(tmp_path / "root")
    bucket = request.getfixturevalue("bucket")
    return open_storage(f"s3://{bucket}/some/prefix")


def test_write_read_list_exists_copy_delete(store, tmp_path):
    assert store.list() == [] and not store.exists("a/b.txt")
    store.write_text("a/b.txt", "hello")
    store.write_bytes("a/c/d.bin", b"\x00\x01")
    assert store.read_text("a/b.txt") == "hello"
    assert store.exists("a/b.txt") and not store.exists("a/nope.txt")
    assert store.list() == ["a/b.txt", "a/c/d.bin"]
    assert store.list("a/c") == ["a/c/d.bin"]
    assert store.size("a/c/d.bin") == 2
    store.copy("a/b.txt", "z/copy.txt")
    assert store.read_text("z/copy.txt") == "hello"
    local = tmp_path / "big.bin"
    local.write_bytes(b"x" * 3_000_000)
    store.upload(local, "up/big.bin")
    store.download("up/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    assert store.uri("x/y").endswith("/x/y")


def test_overwrite_replaces_whole_object(store):
    store.write_text("k", "first version, longer")
    store.write_text("k", "second")
    assert store.read_text("k") == "second"


@pytest.mark.parametrize("key", ["", "../escape", "a/../b", "a//b"])
def test_invalid_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).write_text(key, "x")


def test_local_write_is_atomic(tmp_path):
    """A writer that dies part-way leaves neither a partial file nor a visible temporary."""
    store = LocalStorage(tmp_path)
    store.write_text("t.txt", "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store._atomic("t.txt", fail)
    assert store.read_text("t.txt") == "old"
    assert store.list() == ["t.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_split_s3():
    assert split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        split_s3("s3:///nobucket")
