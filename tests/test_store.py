"""store: the same operations on local paths and on a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import os

import pytest

from semhash_spark.io import store
from semhash_spark.io.embedded import _free_ports


# ---------------------------------------------------------------------------------------------------- local


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_round_trip(tmp_path, scheme):
    root = scheme + str(tmp_path / "root")
    store.write_bytes(store.join(root, "a", "x.bin"), b"hello")
    store.write_bytes(store.join(root, "a/b/y.bin"), b"world!")
    assert store.read_bytes(store.join(root, "a/x.bin")) == b"hello"
    assert store.exists(store.join(root, "a/x.bin")) and not store.exists(store.join(root, "nope"))
    assert store.size(store.join(root, "a/b/y.bin")) == 6
    assert store.list_prefix(root) == [("a/b/y.bin", 6), ("a/x.bin", 5)]
    assert store.list_dir(store.join(root, "a")) == ["b", "x.bin"]
    assert store.local_copy(root) == str(tmp_path / "root")
    store.write_bytes(store.join(root, "a/x.bin"), b"replaced")  # overwrite is atomic
    assert store.read_bytes(store.join(root, "a/x.bin")) == b"replaced"
    assert not [p for p in (tmp_path / "root" / "a").iterdir() if p.name.startswith(".tmp-")]
    assert store.delete_prefix(store.join(root, "a")) == 2
    assert store.list_prefix(root) == [] and store.delete_prefix(store.join(root, "gone")) == 0


def test_local_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "no" / "such.bin")
    with pytest.raises(store.NotFound, match="such.bin"):
        store.read_bytes(missing)


def test_join_and_split():
    assert store.join("s3://b/idx/", "versions", "/V/") == "s3://b/idx/versions/V"
    assert store.join("s3://b", "k") == "s3://b/k"
    assert store.split_s3("s3://b/a/b") == ("b", "a/b")
    assert store.is_s3("s3://b") and not store.is_s3("/tmp/x")
    with pytest.raises(ValueError):
        store.split_s3("s3:///key")


# ---------------------------------------------------------------------------------------------------- S3


def test_s3_round_trip(s3_server):
    root = s3_server.uri("store-test/rt")
    store.write_bytes(store.join(root, "a/x.bin"), b"hello")
    store.write_json(store.join(root, "b.json"), {"k": 1})
    assert store.read_bytes(store.join(root, "a/x.bin")) == b"hello"
    assert store.read_json(store.join(root, "b.json")) == {"k": 1}
    assert store.exists(store.join(root, "a/x.bin")) and not store.exists(store.join(root, "a/nope"))
    assert store.size(store.join(root, "a/x.bin")) == 5
    listing = store.list_prefix(root)
    assert [k for k, _ in listing] == ["a/x.bin", "b.json"] and listing[0][1] == 5
    assert store.list_dir(root) == ["a", "b.json"]
    assert store.delete_prefix(root) == 2
    assert store.list_prefix(root) == []


def test_s3_missing_key_and_bucket_name_the_uri(s3_server):
    uri = s3_server.uri("store-test/does/not/exist.bin")
    with pytest.raises(store.NotFound) as e:
        store.read_bytes(uri)
    assert uri in str(e.value) and "no such key" in str(e.value)
    with pytest.raises(store.StoreError, match="bucket 'no-such-bucket' does not exist"):
        store.read_bytes("s3://no-such-bucket/x")


def test_s3_multipart_dir_round_trip(s3_server, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(20 << 20)  # 20 MiB: three 8 MiB parts
    (src / "sub" / "big.bin").write_bytes(big)
    (src / "small.txt").write_bytes(b"s")
    uri = s3_server.uri("store-test/dir")
    assert store.upload_dir(src, uri) == 2
    assert store.list_prefix(uri) == [("small.txt", 1), ("sub/big.bin", 20 << 20)]
    etag = store.client().head_object(Bucket=s3_server.bucket, Key="store-test/dir/sub/big.bin")["ETag"]
    assert "-" in etag  # a multipart upload's ETag
    dest = tmp_path / "dest"
    assert store.download_prefix(uri, dest) == 2
    assert (dest / "sub" / "big.bin").read_bytes() == big
    assert (dest / "small.txt").read_bytes() == b"s"


def test_s3_local_copy_is_cached_by_listing(s3_server, tmp_path, monkeypatch):
    uri = s3_server.uri("store-test/cached")
    store.write_bytes(store.join(uri, "m/a.bin"), b"one")
    cache = tmp_path / "cache"
    first = store.local_copy(uri, cache_dir=cache)
    assert open(os.path.join(first, "m", "a.bin"), "rb").read() == b"one"

    def no_download(*a, **k):
        raise AssertionError("a cached prefix must not be downloaded again")

    with monkeypatch.context() as m:
        m.setattr(store, "download_file", no_download)
        assert store.local_copy(uri, cache_dir=cache) == first
    store.write_bytes(store.join(uri, "m/a.bin"), b"two!")  # changed: a fresh copy
    second = store.local_copy(uri, cache_dir=cache)
    assert second != first and open(os.path.join(second, "m", "a.bin"), "rb").read() == b"two!"
    single = store.local_copy(store.join(uri, "m/a.bin"), cache_dir=cache)
    assert open(single, "rb").read() == b"two!"


def test_s3_unreachable_endpoint(s3_server, monkeypatch):
    port = _free_ports(1, __import__("random").Random(7))[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(store.StoreError, match="endpoint unreachable") as e:
        store.read_bytes("s3://semhash/x")
    assert "s3://semhash/x" in str(e.value)


def test_s3_no_credentials(s3_server, monkeypatch, tmp_path):
    for k in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(store.StoreError, match="no credentials"):
        store.read_bytes(s3_server.uri("x"))


def test_s3_wrong_secret_is_access_denied(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(store.StoreError, match="access denied"):
        store.list_prefix(s3_server.uri("store-test"))


def test_z_server_restart_keeps_data(s3_server):
    """Named to run last in this module: the session's server is killed and started again."""
    uri = s3_server.uri("store-test/durable.bin")
    store.write_bytes(uri, b"kept")
    endpoint = s3_server.endpoint
    s3_server.restart()
    assert s3_server.endpoint == endpoint
    assert store.read_bytes(uri) == b"kept"
    store.delete(uri)
    assert not store.exists(uri)
