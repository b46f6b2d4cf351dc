"""ObjectStore contract: the same tests against a LocalStore and an S3Store on real SeaweedFS."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tasks.core.errors import StoreError
from tasks.steps.store import upload_task
from tasks.store.objects import (
    LocalStore,
    ObjectStore,
    S3Store,
    decode_metadata,
    encode_metadata,
    open_store,
    validate_key,
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path) -> ObjectStore:
    """A fresh, empty store of each kind; S3 credentials come from the environment."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return S3Store(bucket, prefix="zpipe/test")


# --- The contract, for both stores --------------------------------------------------------


def test_put_get_exists_list_delete(store: ObjectStore):
    assert store.list() == []
    assert not store.exists("a/b/one.jpg")
    assert store.put("a/b/one.jpg", b"one", "image/jpeg", {"seed": "42"}) is True
    assert store.put("a/two.json", b"{}", "application/json") is True
    assert store.put("top.txt", b"top") is True
    assert store.exists("a/b/one.jpg")
    assert store.get("a/b/one.jpg") == b"one"
    assert store.list() == ["a/b/one.jpg", "a/two.json", "top.txt"]
    assert store.list("a/") == ["a/b/one.jpg", "a/two.json"]
    assert store.list("a/b") == ["a/b/one.jpg"]
    assert store.list("nothing/") == []
    store.delete("a/b/one.jpg")
    assert not store.exists("a/b/one.jpg")
    assert store.list() == ["a/two.json", "top.txt"]
    store.delete("a/b/one.jpg")  # deleting a missing key is not an error


def test_put_without_overwrite_keeps_the_original(store: ObjectStore):
    assert store.put("k/img.png", b"original") is True
    assert store.put("k/img.png", b"second") is False
    assert store.get("k/img.png") == b"original"
    assert store.put("k/img.png", b"third", overwrite=True) is True
    assert store.get("k/img.png") == b"third"


def test_concurrent_exclusive_puts_have_one_winner(store: ObjectStore):
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def writer(i: int) -> None:
        barrier.wait()
        results.append(store.put("race/obj.bin", f"writer-{i}".encode() * 1000))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    data = store.get("race/obj.bin")
    assert data == data[: len(data) // 1000] * 1000  # one writer's bytes, whole
    assert store.list("race/") == ["race/obj.bin"]  # no temp files left behind


def test_binary_and_empty_payloads(store: ObjectStore):
    payload = bytes(range(256)) * 4096  # 1 MiB
    store.put("bin/blob", payload)
    store.put("bin/empty", b"")
    assert store.get("bin/blob") == payload
    assert store.get("bin/empty") == b""


@pytest.mark.parametrize(
    "key",
    ["", "/abs/key", "a/../b", "..", "a\\b", "a//b", "a/./b", "dir/", "x" * 1025, "a\nb"],
)
def test_bad_key_is_refused_with_its_name(store: ObjectStore, key: str):
    with pytest.raises(StoreError) as err:
        store.put(key, b"x")
    assert "invalid object key" in str(err.value)
    assert repr(key[:60]) in str(err.value) or repr(key[:60])[:-1] in str(err.value)
    with pytest.raises(StoreError, match="invalid object key"):
        store.get(key)


def test_missing_key_error_names_key_and_store(store: ObjectStore):
    with pytest.raises(StoreError) as err:
        store.get("no/such/key.jpg")
    assert "'no/such/key.jpg'" in str(err.value)
    assert store.describe() in str(err.value)


def test_describe_reopens_the_same_store(store: ObjectStore):
    store.put("x/y.txt", b"y")
    again = open_store(store.describe())
    assert type(again) is type(store)
    assert again.get("x/y.txt") == b"y"


def test_url_reads_the_object(store: ObjectStore):
    store.put("pics/a b 生.jpg", b"jpeg-bytes", "image/jpeg")
    url = store.url("pics/a b 生.jpg", expires_s=300)
    if isinstance(store, LocalStore):
        assert url.startswith("file:///")
        from urllib.request import url2pathname

        assert Path(url2pathname(urlsplit(url).path)).read_bytes() == b"jpeg-bytes"
    else:
        assert url.startswith("http")
        assert "Signature" in url
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content == b"jpeg-bytes"
        assert response.headers["content-type"] == "image/jpeg"


def test_upload_task_wrapper_opens_store_from_url(store: ObjectStore):
    assert upload_task.name == "upload"
    assert upload_task.retries == 3
    url, kind = store.describe(), "application/octet-stream"
    assert upload_task.fn(url, "t/u.bin", b"u", kind, {"seed": "1"}) is True
    assert upload_task.fn(url, "t/u.bin", b"v", kind, {"seed": "2"}) is False
    assert store.get("t/u.bin") == b"u"


# --- LocalStore ---------------------------------------------------------------------------


def test_local_store_writes_atomically_under_root(tmp_path):
    store = LocalStore(tmp_path / "root")
    store.put("a/b.txt", b"hello")
    assert (tmp_path / "root" / "a" / "b.txt").read_bytes() == b"hello"
    assert [p.name for p in (tmp_path / "root" / "a").iterdir()] == ["b.txt"]
    assert store.describe() == (tmp_path / "root").as_uri()
    assert store.list() == ["a/b.txt"]


# --- S3Store ------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_metadata_is_ascii_encoded_and_round_trips(s3_server, s3_bucket):
    store = S3Store(s3_bucket, client=s3_server.client())
    meta = {"seed": "42", "prompt": "晨光咖啡 100% latte", "template": "poster@3"}
    store.put("m/img.jpg", b"x", "image/jpeg", meta)
    raw = s3_server.client().head_object(Bucket=s3_bucket, Key="m/img.jpg")["Metadata"]
    assert all(v.isascii() for v in raw.values())
    assert decode_metadata(raw) == meta
    head = store.head("m/img.jpg")
    assert head == {"content_type": "image/jpeg", "size": 1, "metadata": meta}


def test_metadata_errors_name_the_fix():
    with pytest.raises(StoreError, match="invalid metadata key 'bad key'"):
        encode_metadata({"bad key": "v"})
    with pytest.raises(StoreError, match="S3 allows 2048"):
        encode_metadata({"prompt": "x" * 3000})
    assert encode_metadata({"Seed": "1"}) == {"seed": "1"}


@pytest.mark.s3
def test_s3_client_is_created_lazily(s3_server, s3_bucket, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(s3_bucket, prefix="lazy")
    assert store._client is None  # nothing happens in the constructor
    store.put("k", b"v")
    assert store._client is not None
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="lazy/k")["Body"].read() == b"v"


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_s3_wrong_credentials_name_the_variables_not_the_secret(
    s3_server, s3_bucket, monkeypatch, wrong
):
    env = s3_server.env()
    if wrong == "secret":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-" + "9" * 20
    else:
        env["AWS_ACCESS_KEY_ID"] = "nobody-" + "8" * 10
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = S3Store(s3_bucket)
    with pytest.raises(StoreError) as err:
        store.put("k", b"v")
    message = str(err.value)
    assert "AWS_ACCESS_KEY_ID" in message
    assert s3_bucket in message
    assert env["AWS_SECRET_ACCESS_KEY"] not in message
    assert s3_server.secret_key not in message
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID"):
        store.get("k")


@pytest.mark.s3
def test_s3_missing_bucket_and_ensure_bucket(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store("zpipe-not-created-yet")
    # (SeaweedFS creates a bucket on PutObject for an admin identity; AWS does not: read here)
    with pytest.raises(StoreError, match="bucket 'zpipe-not-created-yet' does not exist") as err:
        store.list()
    assert "create it or check the URL" in str(err.value)
    assert s3_server.endpoint_url in str(err.value)
    with pytest.raises(StoreError, match="create it or check the URL"):
        store.get("k")
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    assert store.put("k", b"v") is True
    assert store.get("k") == b"v"


def test_s3_unreachable_endpoint_is_named(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(StoreError, match=rf"endpoint http://127\.0\.0\.1:{port} is unreachable"):
        store.get("k")


def test_s3_bad_bucket_name():
    with pytest.raises(StoreError, match="invalid bucket name 'Bad_Bucket'"):
        S3Store("Bad_Bucket")


# --- open_store ---------------------------------------------------------------------------


def test_open_store_file_urls_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {
        f"file://{tmp_path}/abs": tmp_path / "abs",
        "file://./rel/dir": tmp_path / "base" / "rel" / "dir",
        "file://localhost/srv/x": Path("/srv/x"),
        str(tmp_path / "bare-abs"): tmp_path / "bare-abs",
        "out": tmp_path / "base" / "out",
        "./out2": tmp_path / "base" / "out2",
    }
    for url, root in cases.items():
        store = open_store(url, base_dir=tmp_path / "base")
        assert isinstance(store, LocalStore), url
        assert store.root == root, url
    assert open_store("out").root == tmp_path / "out"  # relative to cwd without base_dir
    assert open_store("file://./o").root == tmp_path / "o"


def test_open_store_s3_urls():
    store = open_store("s3://my-bucket")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.describe()) == ("my-bucket", "", "s3://my-bucket")
    store = open_store("s3://my-bucket/some/prefix/")
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix/")
    assert store.describe() == "s3://my-bucket/some/prefix"
    assert store._client is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "empty store URL"),
        ("http://example.com/x", "unsupported store URL 'http://example.com/x'"),
        ("gs://bucket", "s3://bucket"),
        ("s3:bucket", "unsupported store URL"),
        ("s3://", "has no bucket"),
        ("s3://bkt/../x", "invalid object key"),
        ("file://host/x", "names host 'host'"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, expected: str):
    with pytest.raises(StoreError, match=expected.replace(".", r"\.")):
        open_store(url)


def test_validate_key_accepts_normal_keys():
    for key in ["a", "demo/2025-W23/mon-1x1-v1.jpg", "中文/键.png", "a.b/c..d"]:
        assert validate_key(key) == key
