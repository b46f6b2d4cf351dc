"""One `ObjectStore` interface with a local-directory and an S3 implementation.

Choose one with `open_store(url)`: `file:///abs`, `./rel` or `s3://bucket/prefix`. Only the URL
crosses task boundaries; each task opens its own store (S3 clients are created lazily).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tempfile
import threading
import unicodedata
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from tasks.core.errors import StoreError

MAX_KEY_BYTES = 1024  # S3's limit on key length
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata (keys + values)
# What a boto3 client reads from the environment: a change of any gives a new client.
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
               "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()
TMP_MARK = ".zpipe-tmp-"  # LocalStore temp files: hidden from list()
_URL_FORMS = "file:///abs/dir, file://./rel/dir, a plain path (dir or ./dir), s3://bucket[/prefix]"
_CREDENTIAL_VARS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken", "Forbidden", "403"}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_METADATA_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # 's3:bucket' is a typo, not a dir
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


MAX_SEGMENT_BYTES = 255  # NAME_MAX of common filesystems: a LocalStore key segment is a file name
# Characters that draw nothing or reorder what is drawn (zero-width, bidi overrides, BOM,
# line/paragraph separators) or cannot be stored (surrogates, private use): a key holding
# one looks like another key in every listing.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def find_hidden(text: str) -> tuple[int, str] | None:
    """The first control, invisible or bidi character of `text` and its position, or None."""
    return next(((i, ch) for i, ch in enumerate(text)
                 if unicodedata.category(ch) in _HIDDEN_CATEGORIES), None)


def _key_problem(key: str) -> str | None:
    """Why `key` (or a list prefix) is unsafe as a relative object key, or None."""
    if key.startswith("/"):
        return "it starts with '/'"
    if "\\" in key:
        return "it contains a backslash"
    hidden = find_hidden(key)
    if hidden is not None:
        position, char = hidden
        kind = ("a control character" if unicodedata.category(char) == "Cc"
                else "an invisible or bidi character")
        name = unicodedata.name(char, "unnamed")
        return f"it contains {kind} U+{ord(char):04X} ({name}) at position {position}"
    if ".." in key.split("/"):
        return "it has a '..' path segment"
    too_long = next((p for p in key.split("/") if len(p.encode("utf-8")) > MAX_SEGMENT_BYTES), None)
    if too_long is not None:
        return f"a path segment is {len(too_long.encode('utf-8'))} bytes (at most {MAX_SEGMENT_BYTES})"
    return None


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise StoreError naming it."""
    fix = "use a relative path like 'demo/campaign/2025-06-02/img-0001.jpg'"
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid object key {key!r}: it is empty; {fix}")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise StoreError(f"invalid object key {key[:60]!r}...: longer than {MAX_KEY_BYTES} bytes")
    reason = _key_problem(key)
    if reason is None and any(part in ("", ".") for part in key.split("/")):
        reason = "it has an empty, '.' or '..' path segment"
    if reason:
        raise StoreError(f"invalid object key {key!r}: {reason}; {fix}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A list() prefix: empty, or a key start that is safe (it may end in '/')."""
    reason = _key_problem(prefix) if prefix else None
    if reason:
        raise StoreError(f"invalid list prefix {prefix!r}: {reason}; use a relative path like 'demo/'")
    return prefix


class ObjectStore(ABC):
    """Put, get and list bytes by key; implementations: LocalStore, S3Store."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        overwrite: bool = False,
    ) -> bool:
        """Write `data` at `key`; False (nothing written) if it exists and overwrite is False."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes at `key` (StoreError if missing)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if an object exists at `key`."""

    @abstractmethod
    def url(self, key: str, expires_s: int = 3600) -> str:
        """A URL to read `key` (presigned for S3, file:// for local)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with `prefix`, relative to the store's root."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` (no error if it is already gone)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store lives, as a URL without secrets."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class LocalStore(ObjectStore):
    """Objects as files under `root`; writes are atomic. Metadata is not kept (S3 only)."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        overwrite: bool = False,
    ) -> bool:
        """Write via a temp file + rename (overwrite) or hard link (exclusive: one writer wins)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
        except OSError as exc:
            raise StoreError(f"cannot write {key!r} in {self.describe()}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if the key exists
            except FileExistsError:
                return False
            return True
        except OSError as exc:
            raise StoreError(f"cannot write {key!r} in {self.describe()}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get(self, key: str) -> bytes:
        """Read the file at `key`."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreError(f"no object {key!r} in {self.describe()}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key!r} in {self.describe()}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """True if a file exists at `key`."""
        return self._path(key).is_file()

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A file:// URI (no expiry)."""
        return self._path(key).as_uri()

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under the root that start with `prefix`."""
        _validate_prefix(prefix)
        keys = []
        folder = prefix.rpartition("/")[0]  # only the folder the prefix names can hold matches
        for dirpath, _dirs, files in os.walk(self.root / folder if folder else self.root):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(".") and TMP_MARK in name:
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the file at `key` if present."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {key!r} in {self.describe()}: {exc}") from exc

    def describe(self) -> str:
        """The root as a file:// URI."""
        return self.root.as_uri()


class S3Store(ObjectStore):
    """Objects in an S3 bucket (AWS, MinIO, SeaweedFS, R2) under an optional key prefix.

    Credentials and endpoint come from the usual AWS environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...) unless a client or endpoint_url is given.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
    ):
        if not _BUCKET.match(bucket or ""):
            raise StoreError(
                f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-'"
            )
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self._client = client
        self._endpoint_url = endpoint_url
        self._client_lock = threading.Lock()  # threads sharing a store share one client

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        """The process's boto3 client for this endpoint and the environment's credentials.

        Creating a client costs tens of milliseconds of CPU (and far more the first time), and
        a flow opens its store in many tasks: clients are shared (boto3 clients are
        thread-safe), one per endpoint and credentials, read from the environment now.
        """
        env = {name: os.environ.get(name) for name in _CLIENT_ENV}
        secret = env.pop("AWS_SECRET_ACCESS_KEY") or ""
        key = (self._endpoint_url, tuple(sorted(env.items())),
               hashlib.sha256(secret.encode()).hexdigest())
        with _CLIENTS_LOCK:
            if key not in _CLIENTS:
                _CLIENTS[key] = self._new_client()
            return _CLIENTS[key]

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            signature_version="s3v4",
        )
        try:
            # a fresh session reads the environment now (the default one caches credentials)
            session = boto3.session.Session()
            return session.client("s3", endpoint_url=self._endpoint_url, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise StoreError(
                f"cannot create an S3 client for {self.describe()}: {type(exc).__name__}: "
                f"{exc}; check AWS_ENDPOINT_URL and AWS_DEFAULT_REGION"
            ) from exc

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key or ''}"

    def _error(self, exc: Exception, action: str, key: str | None = None) -> StoreError:
        """Translate a botocore error into a StoreError that names the object and the fix."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = self._where(key)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "?"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StoreError(
                    f"cannot {action} {where}: bucket {self.bucket!r} does not exist at "
                    f"{self._endpoint()}; create it or check the URL"
                )
            if code in _AUTH_CODES or status == 403:
                return StoreError(
                    f"cannot {action} {where}: access refused ({code}) by {self._endpoint()}; "
                    f"check {_CREDENTIAL_VARS} (and that they may use bucket {self.bucket!r})"
                )
            message = str(err.get("Message", ""))[:200]
            return StoreError(f"cannot {action} {where}: {code} (HTTP {status}) {message}".rstrip())
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"cannot {action} {where}: no AWS credentials; "
                              f"set {_CREDENTIAL_VARS}")
        unreachable = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                       ConnectionClosedError)
        if isinstance(exc, unreachable):
            return StoreError(
                f"cannot {action} {where}: S3 endpoint {self._endpoint()} is unreachable; "
                "check AWS_ENDPOINT_URL and that the server is running"
            )
        return StoreError(f"cannot {action} {where}: {type(exc).__name__}: {exc}")

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", None) or "the default AWS endpoint")

    def _call(self, action: str, key: str | None, method: str, **kwargs: Any) -> Any:
        """Call one client method, turning botocore errors into StoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, action, key) from exc

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        overwrite: bool = False,
    ) -> bool:
        """PutObject; without overwrite a conditional put (If-None-Match: *), 412 -> False."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self._key(key), "Body": data,
            "ContentType": content_type, "Metadata": encode_metadata(metadata or {}),
        }
        if not overwrite:
            kwargs["IfNoneMatch"] = "*"
        try:
            self._call("write", key, "put_object", **kwargs)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and (
                cause.response.get("Error", {}).get("Code") == "PreconditionFailed"
                or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
            ):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        """GetObject."""
        from botocore.exceptions import BotoCoreError

        try:
            response = self._call("read", key, "get_object", Bucket=self.bucket, Key=self._key(key))
        except StoreError as exc:
            if _is_not_found(exc):
                raise StoreError(f"no object {key!r} in {self.describe()}") from None
            raise
        try:
            return response["Body"].read()
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from exc

    def exists(self, key: str) -> bool:
        """HeadObject: True if present, False on 404."""
        try:
            self._call("check", key, "head_object", Bucket=self.bucket, Key=self._key(key))
        except StoreError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def head(self, key: str) -> dict[str, Any]:
        """Content type, size and (decoded) user metadata of `key`."""
        try:
            r = self._call("check", key, "head_object", Bucket=self.bucket, Key=self._key(key))
        except StoreError as exc:
            if _is_not_found(exc):
                raise StoreError(f"no object {key!r} in {self.describe()}") from None
            raise
        return {
            "content_type": r.get("ContentType", ""),
            "size": r.get("ContentLength", 0),
            "metadata": decode_metadata(r.get("Metadata", {})),
        }

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL valid for `expires_s` seconds (1 s .. 7 days)."""
        if not 1 <= expires_s <= 604800:
            raise StoreError(f"expires_s must be 1..604800 seconds (got {expires_s})")
        return self._call(
            "presign", key, "generate_presigned_url", ClientMethod="get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s,
        )

    def list(self, prefix: str = "") -> list[str]:
        """ListObjectsV2 (all pages) under the store prefix + `prefix`."""
        _validate_prefix(prefix)
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call(
                "list", prefix, "list_objects_v2",
                Bucket=self.bucket, Prefix=self.prefix + prefix, **token,
            )
            keys.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete(self, key: str) -> None:
        """DeleteObject (S3 reports success for a missing key)."""
        self._call("delete", key, "delete_object", Bucket=self.bucket, Key=self._key(key))

    def describe(self) -> str:
        """s3://bucket/prefix."""
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}".rstrip("/")

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (local stack and tests)."""
        try:
            self._call("check", None, "head_bucket", Bucket=self.bucket)
            return
        except StoreError as exc:
            if not _is_not_found(exc) and "NoSuchBucket" not in str(exc):
                raise
        region = self.client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":  # AWS wants the region spelled out elsewhere
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("create", None, "create_bucket", **kwargs)
        except StoreError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise


def _is_not_found(exc: StoreError) -> bool:
    """True if the StoreError wraps a 404 / NoSuchKey."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    if not isinstance(cause, ClientError):
        return False
    code = str(cause.response.get("Error", {}).get("Code", ""))
    status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket")


def encode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """S3 user metadata must be ASCII: percent-encode values (and '%'); check keys and size."""
    encoded = {}
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            raise StoreError(
                f"invalid metadata key {key!r}: use ASCII letters, digits, '-' and '_'"
            )
        encoded[key.lower()] = quote(str(value), safe=_METADATA_SAFE)
    size = sum(len(k) + len(v) for k, v in encoded.items())
    if size > MAX_METADATA_BYTES:
        raise StoreError(
            f"metadata is {size} bytes encoded (keys {sorted(encoded)}); S3 allows "
            f"{MAX_METADATA_BYTES}: move long values (e.g. the prompt) into a JSON sidecar object"
        )
    return encoded


def decode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Undo encode_metadata's percent-encoding."""
    return {key: unquote(value) for key, value in metadata.items()}


def open_store(url: str, base_dir: Path | None = None) -> ObjectStore:
    """Open a store from a URL: file:///abs, file://./rel, a plain path, or s3://bucket/prefix."""
    if not url or not url.strip():
        raise StoreError(f"empty store URL; use one of: {_URL_FORMS}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if "://" not in url:
        if _SCHEME_LIKE.match(url):
            raise StoreError(f"unsupported store URL {url!r}; use one of: {_URL_FORMS}")
        path = Path(url).expanduser()
        return LocalStore(path if path.is_absolute() else base / path)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc:
            raise StoreError(f"store URL {url!r} has no bucket; use s3://bucket[/prefix]")
        if parts.query or parts.fragment:
            raise StoreError(f"store URL {url!r} has a query or fragment; use s3://bucket[/prefix]")
        return S3Store(parts.netloc, prefix=unquote(parts.path))
    if scheme == "file":
        path = unquote(parts.path)
        if parts.netloc in ("", "localhost"):
            return LocalStore(Path(path))
        if parts.netloc in (".", ".."):
            return LocalStore(base / (parts.netloc + path))
        raise StoreError(
            f"store URL {url!r} names host {parts.netloc!r}; use file:///abs/dir or file://./rel/dir"
        )
    raise StoreError(f"unsupported store URL {url!r}; use one of: {_URL_FORMS}")


def store_at(url: str) -> ObjectStore:
    """The store at `url`, opened once per process (per working directory and S3 environment).

    Steps receive store URLs (strings travel between tasks, stores do not) and call this: one
    opener, cached, instead of `open_store(url)` in every step.
    """
    env = tuple(os.environ.get(name) for name in _CLIENT_ENV)  # new credentials: a new store
    return _store_at(url, str(Path.cwd()), env)


@functools.lru_cache(maxsize=32)
def _store_at(url: str, cwd: str, env: tuple[str | None, ...]) -> ObjectStore:
    return open_store(url, Path(cwd))
