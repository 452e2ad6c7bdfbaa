"""The only object-store code: local paths (or ``file://``) and ``s3://bucket/prefix`` URIs.

Every function takes a URI and works the same on both. S3 settings come from the standard AWS environment
(``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_MAX_ATTEMPTS``); a custom endpoint gets path-style addressing. One boto3 client is
built per process and per distinct settings (so a forked Spark worker builds its own) and retries transient errors.

Failures raise :class:`StoreError` (or its :class:`NotFound`) naming the URI and the cause -- a missing bucket or
key, no credentials, an unreachable endpoint -- never a raw botocore traceback.

Writes are atomic: a local write goes to a temporary file in the same directory and is renamed into place; an S3
PUT is atomic by itself. Temporary local files start with ``.tmp-`` and are never listed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_MULTIPART_BYTES = 8 << 20  # uploads above this go in 8 MiB parts
_DELETE_BATCH = 1000  # S3 DeleteObjects limit


class StoreError(RuntimeError):
    """An object-store operation failed; ``uri`` names the object and ``cause`` says why."""

    def __init__(self, uri: str, cause: str, op: str | None = None):
        self.uri, self.cause, self.op = uri, cause, op
        super().__init__(f"{op + ' ' if op else ''}{uri}: {cause}")


class NotFound(StoreError):
    """The object (or the bucket holding it) does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write found the object changed (or present, or absent) since it was read."""


# ----------------------------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/idx", "versions", "V")`` -> ``"s3://b/idx/versions/V"``; works on local paths alike."""
    out = str(uri)
    for p in parts:
        p = str(p).strip("/")
        if not p:
            continue
        out = p if not out else (out if out.endswith("/") else out + "/") + p
    return out


def split_s3(uri: str) -> tuple[str, str]:
    """``"s3://bucket/a/b"`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r} (expected s3://bucket/prefix)")
    return bucket, key


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (strips ``file://``)."""
    uri = str(uri)
    if is_s3(uri):
        raise ValueError(f"not a local URI: {uri!r}")
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _dir_key(key: str) -> str:
    """An S3 key prefix treated as a directory: ``"a/b"`` -> ``"a/b/"``, ``""`` -> ``""``."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- S3 client


@dataclass(frozen=True)
class S3Settings:
    """What a boto3 client needs; ``None`` leaves a value to boto3's own resolution (profiles, IMDS)."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "S3Settings":
        env = os.environ if environ is None else environ
        attempts = env.get("AWS_MAX_ATTEMPTS", "")
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
            max_attempts=int(attempts) if attempts.strip().isdigit() else 5,
        )


S3_ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_MAX_ATTEMPTS",
)


def driver_s3_env() -> dict[str, str]:
    """The S3 settings of this (driver) process, for Spark tasks whose workers did not inherit them.

    Python workers are forked from an environment fixed when the JVM started; on a cluster, executors normally
    have their own (instance role, ``spark.executorEnv.*``) and :func:`apply_s3_env` keeps those.
    """
    return {k: os.environ[k] for k in S3_ENV_KEYS if os.environ.get(k)}


def apply_s3_env(env: Mapping[str, str]) -> None:
    """In a Spark task: fills in S3 settings the worker lacks, never overriding its own."""
    for k, v in env.items():
        os.environ.setdefault(k, v)


_client_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _cached_client(settings: S3Settings, pid: int):
    import boto3
    from botocore.config import Config

    cfg = Config(
        region_name=settings.region,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
        max_pool_connections=16,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        config=cfg,
    )


def client(settings: S3Settings | None = None):
    """The process's boto3 S3 client for ``settings`` (default: from the environment now)."""
    s = settings or S3Settings.from_env()
    with _client_lock:  # boto3 client creation is not thread-safe
        return _cached_client(s, os.getpid())


def _translate(exc: BaseException, uri: str, op: str) -> StoreError:
    """botocore/boto3 exception -> StoreError with a cause a user can act on."""
    from botocore import exceptions as bx

    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, bx.NoCredentialsError):
        return StoreError(uri, "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)", op)
    if isinstance(
        exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError)
    ):
        return StoreError(uri, f"endpoint unreachable ({exc})", op)
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = err.get("Message") or ""
        if code in ("NoSuchBucket",):
            bucket = split_s3(uri)[0] if is_s3(uri) else "?"
            return NotFound(uri, f"bucket {bucket!r} does not exist", op)
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(uri, "no such key", op)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
            return StoreError(uri, f"access denied ({code}: {msg or 'check the credentials'})", op)
        return StoreError(uri, f"{code or 'error'}: {msg or exc}", op)
    if isinstance(exc, bx.BotoCoreError):
        return StoreError(uri, str(exc), op)
    if isinstance(exc, FileNotFoundError):
        return NotFound(uri, "no such file", op)
    if isinstance(exc, OSError):
        return StoreError(uri, f"{type(exc).__name__}: {exc}", op)
    return StoreError(uri, f"{type(exc).__name__}: {exc}", op)


class _errors:
    """``with _errors(uri, "read"):`` turns any failure inside into a StoreError naming ``uri``."""

    def __init__(self, uri: str, op: str):
        self.uri, self.op = uri, op

    def __enter__(self):
        return self

    def __exit__(self, et, exc, tb):
        if exc is None or isinstance(exc, StoreError) or not isinstance(exc, Exception):
            return False
        if isinstance(exc, (ValueError, TypeError)) and not _is_boto_error(exc):
            return False  # programming errors (a bad URI) stay what they are
        raise _translate(exc, self.uri, self.op) from None


def _is_boto_error(exc: BaseException) -> bool:
    from botocore import exceptions as bx

    return isinstance(exc, (bx.BotoCoreError, bx.ClientError))


def _is_missing(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in (
        "404",
        "NoSuchKey",
        "NotFound",
    )


# ----------------------------------------------------------------------------------------------- objects


def read_bytes(uri: str) -> bytes:
    with _errors(uri, "read"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return client().get_object(Bucket=bucket, Key=key)["Body"].read()
        with open(local_path(uri), "rb") as f:
            return f.read()


def read_json(uri: str):
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except ValueError as e:
        raise StoreError(uri, f"not valid JSON ({e})", "read") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` at ``uri`` atomically (readers see the old object or the new one, never a part)."""
    with _errors(uri, "write"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            client().put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = local_path(uri)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def read_tagged(uri: str) -> tuple[bytes, str] | None:
    """``(bytes, tag)`` of the object, None when there is none; pass the tag to :func:`write_bytes_if`."""
    with _errors(uri, "read"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                r = client().get_object(Bucket=bucket, Key=key)
            except Exception as e:  # noqa: BLE001 - translated by _errors unless it is a missing key
                if _is_missing(e):
                    return None
                raise
            return r["Body"].read(), r["ETag"]
        try:
            with open(local_path(uri), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, sha256_bytes(data)


LOCK_STALE_SECONDS = 30.0  # a local conditional write's lock file older than this is a crashed writer's


def write_bytes_if(uri: str, data: bytes, tag: str | None) -> None:
    """Writes ``data`` only if the object is still as read: ``tag`` from :func:`read_tagged`, None for "absent".

    On S3 a conditional PUT (``If-Match`` / ``If-None-Match: *``); locally a lock file created exclusively beside
    the object for the compare and the rename (a lock older than :data:`LOCK_STALE_SECONDS` is a crashed writer's
    and is broken). Raises :class:`PreconditionFailed` when another writer got there first.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        cond = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        try:
            client().put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except Exception as e:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(e, ClientError) and str(e.response.get("Error", {}).get("Code")) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
                "409",
            ):
                raise PreconditionFailed(uri, "changed by another writer since it was read", "write") from None
            raise _translate(e, uri, "write") from None
        return
    path = local_path(uri)
    lock = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = _take_lock(lock, uri)
    try:
        now = read_tagged(uri)
        if (now[1] if now is not None else None) != tag:
            raise PreconditionFailed(uri, "changed by another writer since it was read", "write")
        write_bytes(uri, data)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _take_lock(lock: str, uri: str, wait_s: float = 10.0) -> int:
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(lock) > LOCK_STALE_SECONDS:
                    os.unlink(lock)  # the writer that made it died holding it
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise StoreError(uri, f"lock {lock} held by another writer for over {wait_s:.0f}s", "write") from None
            time.sleep(0.01)


def write_json(uri: str, obj) -> None:
    write_bytes(uri, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def exists(uri: str) -> bool:
    """Whether an object (S3 key or local file/directory) exists at ``uri``."""
    if not is_s3(uri):
        return os.path.exists(local_path(uri))
    bucket, key = split_s3(uri)
    try:
        client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:  # noqa: BLE001 - translated below
        if _is_missing(e):
            return False
        raise _translate(e, uri, "stat") from None


def size(uri: str) -> int:
    with _errors(uri, "stat"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return int(client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        return os.path.getsize(local_path(uri))


def delete(uri: str) -> None:
    """Deletes one object; a missing one is not an error."""
    with _errors(uri, "delete"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            client().delete_object(Bucket=bucket, Key=key)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local_path(uri))


# ----------------------------------------------------------------------------------------------- prefixes


def _iter_s3(uri: str) -> Iterator[dict]:
    bucket, key = split_s3(uri)
    prefix = _dir_key(key)
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if rel and not rel.endswith("/"):
                yield {"key": rel, "size": int(obj["Size"]), "etag": obj.get("ETag", "").strip('"')}


def _iter_local(root: str) -> Iterator[tuple[str, int]]:
    if not os.path.isdir(root):
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(_TMP_PREFIX):
                continue
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root).replace(os.sep, "/"), os.path.getsize(full)


def list_prefix(uri: str) -> list[tuple[str, int]]:
    """Every object under the prefix (recursively): sorted ``(key relative to uri, size)``; empty if none."""
    with _errors(uri, "list"):
        if is_s3(uri):
            return sorted((o["key"], o["size"]) for o in _iter_s3(uri))
        return sorted(_iter_local(local_path(uri)))


def list_dir(uri: str) -> list[str]:
    """Names of the immediate children (objects and sub-prefixes) of a prefix, sorted."""
    with _errors(uri, "list"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            prefix = _dir_key(key)
            names = set()
            pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            return sorted(n for n in names if n)
        path = local_path(uri)
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if not n.startswith(_TMP_PREFIX))


def delete_prefix(uri: str) -> int:
    """Deletes every object under the prefix; returns how many. A missing prefix deletes nothing."""
    with _errors(uri, "delete"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            prefix = _dir_key(key)
            keys = [prefix + k for k, _ in list_prefix(uri)]
            c = client()
            for s in range(0, len(keys), _DELETE_BATCH):
                batch = [{"Key": k} for k in keys[s : s + _DELETE_BATCH]]
                resp = c.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if resp.get("Errors"):
                    e = resp["Errors"][0]
                    raise StoreError(join(uri, e.get("Key", "")), f"{e.get('Code')}: {e.get('Message')}", "delete")
            return len(keys)
        path = local_path(uri)
        if not os.path.isdir(path):
            return 0
        n = sum(1 for _ in _iter_local(path))
        shutil.rmtree(path)
        return n


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=_MULTIPART_BYTES, multipart_chunksize=_MULTIPART_BYTES, max_concurrency=4, use_threads=True
    )


def upload_file(local_file: str | os.PathLike, uri: str) -> None:
    """Copies one local file to ``uri`` (multipart above 8 MiB on S3; atomic rename locally)."""
    with _errors(uri, "upload"):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            client().upload_file(str(local_file), bucket, key, Config=_transfer_config())
        else:
            _copy_local(str(local_file), local_path(uri))


def download_file(uri: str, local_file: str | os.PathLike) -> None:
    """Copies one object to a local file (atomically: temp file + rename)."""
    with _errors(uri, "download"):
        dest = str(local_file)
        if not is_s3(uri):
            _copy_local(local_path(uri), dest)
            return
        bucket, key = split_s3(uri)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=os.path.dirname(os.path.abspath(dest)))
        os.close(fd)
        try:
            client().download_file(bucket, key, tmp, Config=_transfer_config())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def upload_dir(local_dir: str | os.PathLike, uri: str) -> int:
    """Copies every file under ``local_dir`` to the prefix ``uri`` keeping relative paths; returns the count."""
    local_dir = str(local_dir)
    if not os.path.isdir(local_dir):
        raise StoreError(local_dir, "not a directory", "upload")
    files = list(_iter_local(local_dir))
    for rel, _ in files:
        upload_file(os.path.join(local_dir, rel), join(uri, rel))
    log.debug("uploaded %d files (%d bytes) to %s", len(files), sum(s for _, s in files), uri)
    return len(files)


def download_prefix(uri: str, local_dir: str | os.PathLike) -> int:
    """Copies every object under ``uri`` into ``local_dir`` keeping relative keys; returns the count."""
    entries = list_prefix(uri)
    for rel, _ in entries:
        download_file(join(uri, rel), os.path.join(str(local_dir), *rel.split("/")))
    log.debug("downloaded %d objects from %s to %s", len(entries), uri, local_dir)
    return len(entries)


def copy_object(src: str, dest: str) -> None:
    """Copies one object without moving its bytes through this process where the store allows it.

    S3 to S3: a server-side copy (multipart for large objects). Local to local: a hard link (the files are
    immutable once written, and ``write_bytes`` replaces rather than rewrites), or a byte copy across file
    systems. Either way ``dest`` appears atomically. Mixed schemes are an error: use upload/download.
    """
    if is_s3(src) != is_s3(dest):
        raise ValueError(f"copy_object needs two S3 URIs or two local paths, got {src!r} and {dest!r}")
    with _errors(src, "copy"):
        if is_s3(src):
            sb, sk = split_s3(src)
            db, dk = split_s3(dest)
            client().copy({"Bucket": sb, "Key": sk}, db, dk, Config=_transfer_config())
            return
        s, d = local_path(src), local_path(dest)
        os.makedirs(os.path.dirname(os.path.abspath(d)), exist_ok=True)
        tmp = os.path.join(os.path.dirname(os.path.abspath(d)), _TMP_PREFIX + os.urandom(8).hex())
        try:
            os.link(s, tmp)
        except OSError:  # another file system, or links not allowed: copy the bytes
            _copy_local(s, d)
            return
        try:
            os.replace(tmp, d)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def local_copy(uri: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A local path holding ``uri``: local URIs as they are; an S3 prefix (or single object) is downloaded once.

    The cache entry is keyed by the URI and the listing (keys, sizes, ETags), so a re-run reuses it and a changed
    prefix gets a fresh copy. The entry appears atomically (downloaded aside, then renamed). Default cache:
    ``~/.cache/semhash/store``.
    """
    if not is_s3(uri):
        return local_path(uri)
    with _errors(uri, "list"):
        listing = sorted((o["key"], o["size"], o["etag"]) for o in _iter_s3(uri))
    single = None
    if not listing:
        bucket, key = split_s3(uri)
        try:
            head = client().head_object(Bucket=bucket, Key=key)
        except Exception as e:  # noqa: BLE001
            if _is_missing(e):
                raise NotFound(uri, "no object or prefix at this URI", "copy") from None
            raise _translate(e, uri, "copy") from None
        single = key.rsplit("/", 1)[-1]
        listing = [(single, int(head["ContentLength"]), head.get("ETag", "").strip('"'))]
    root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "semhash" / "store"
    digest = sha256_bytes(json.dumps([uri, listing]).encode())[:24]
    final = root / digest
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
        try:
            if single is not None:
                download_file(uri, tmp / single)
            else:
                for rel, _, _ in listing:
                    download_file(join(uri, rel), tmp.joinpath(*rel.split("/")))
            try:
                os.replace(tmp, final)
            except OSError:  # another process got there first: use its copy
                if not final.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached %s (%d objects) at %s", uri, len(listing), final)
    return str(final / single) if single is not None else str(final)


# ----------------------------------------------------------------------------------------------- buckets


def ensure_bucket(bucket: str, settings: S3Settings | None = None) -> None:
    """Creates ``bucket`` unless it exists (used by the embedded server and the demo)."""
    uri = f"s3://{bucket}"
    c = client(settings)
    try:
        c.head_bucket(Bucket=bucket)
        return
    except Exception as e:  # noqa: BLE001
        if not _is_missing(e) and not _is_no_bucket(e):
            raise _translate(e, uri, "head bucket") from None
    try:
        c.create_bucket(Bucket=bucket)
    except Exception as e:  # noqa: BLE001
        code = getattr(e, "response", {}).get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise _translate(e, uri, "create bucket") from None


def _is_no_bucket(exc: BaseException) -> bool:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code")) == "NoSuchBucket"


# ----------------------------------------------------------------------------------------------- local helpers


def _copy_local(src: str, dest: str) -> None:
    d = os.path.dirname(os.path.abspath(dest))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
