"""Storage through fsspec: local paths and ``s3://`` behave the same.

Writers commit atomically so a retried task never sees half output:
- a single file is written under a temporary name, then renamed;
- a directory of outputs is committed by a ``_SUCCESS`` marker written last
  (datatrove's completion files); readers and reruns trust only marked output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import shutil
import uuid
from typing import IO, Any, Iterator

import fsspec
from fsspec.core import url_to_fs

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"

def s3_options() -> dict[str, Any]:
    """s3fs's options for S3 and S3-compatible stores.

    botocore's adaptive retry mode backs off and retries on throttling (SlowDown, 503, 429)
    and dropped connections, up to 10 attempts per request; files larger than one part
    (shards: hundreds of MB) go up as multipart uploads of 64 MiB parts, each part retried
    on its own. Credentials, endpoint and region: the standard AWS environment (in Airflow,
    the aws_default connection's: plugins/storage_credentials.py). A fresh dict each call:
    botocore rewrites the retries mapping it is given.
    """
    return {"config_kwargs": {"retries": {"total_max_attempts": 10, "mode": "adaptive"}},
            "default_block_size": 64 * 2**20}


class StorageError(OSError):
    """A storage path cannot be read or written; the message names the path."""


def is_local(url: str) -> bool:
    """Whether `url` is a path on this machine's disk (a plain path or file://), not an object store."""
    return "://" not in url or url.startswith("file://")


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `url` and the path inside it."""
    try:
        return url_to_fs(url, **(s3_options() if url.startswith(("s3://", "s3a://")) else {}))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"no filesystem for {url!r}: {exc}") from exc


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URL."""
    return posixpath.join(base.rstrip("/"), *parts) if parts else base


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create directory {url}: {exc}") from exc


def ls(url: str, pattern: str = "*") -> list[str]:
    """Sorted URLs under `url` matching a glob `pattern` (empty if `url` is missing)."""
    fs, path = get_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = fs.glob(posixpath.join(path, pattern))
    if protocol in ("file", "local"):
        return sorted(found)
    return sorted(f"{protocol}://{p}" for p in found)


def _fingerprint(info: dict[str, Any]) -> str:
    """What identifies one version of a file: its size and the store's ETag (S3, HTTP) or its mtime."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def fingerprint(url: str) -> tuple[int, str]:
    """(size, fingerprint) of a file as it is now; raises the store's error when it cannot be looked at."""
    fs, path = get_fs(url)
    info = fs.info(path)
    return int(info.get("size") or 0), _fingerprint(info)


def fingerprints(urls: list[str]) -> dict[str, str | None]:
    """The fingerprint of each file now, None where it cannot be looked at: one listing per folder (a
    crawl's 90,000 WAT files lie in some hundred folders), a look per file where the store cannot list."""
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        by_dir.setdefault(posixpath.dirname(url), []).append(url)
    out: dict[str, str | None] = {}
    for folder, members in by_dir.items():
        fs, path = get_fs(folder)
        try:
            listed = {posixpath.normpath(i["name"]).lstrip("/"): i for i in fs.ls(path, detail=True)}
        except Exception:  # noqa: BLE001 - a store that cannot list (HTTP) or a missing folder
            listed = {}
        for url in members:
            info = listed.get(posixpath.normpath(get_fs(url)[1]).lstrip("/"))
            if info is None:
                try:
                    info = fs.info(get_fs(url)[1])
                except Exception:  # noqa: BLE001 - gone, or unreachable now
                    out[url] = None
                    continue
            out[url] = _fingerprint(info)
    return out


def open_file(url: str, mode: str = "rb", **kwargs: Any) -> IO:
    fs, path = get_fs(url)
    try:
        return fs.open(path, mode, **kwargs)
    except OSError as exc:
        raise StorageError(f"cannot open {url} ({mode}): {exc}") from exc


@contextlib.contextmanager
def atomic_write(url: str, mode: str = "wb") -> Iterator[IO]:
    """Write `url` under a temporary name and rename it into place on success."""
    fs, path = get_fs(url)
    parent = posixpath.dirname(path)
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        fs.makedirs(parent, exist_ok=True)
        handle = fs.open(tmp, mode)
    except OSError as exc:
        raise StorageError(f"cannot write {url}: {exc}") from exc
    try:
        with handle:
            yield handle
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def copy(src: str, dst: str, chunk: int = 16 << 20) -> None:
    """Copy a file, across stores too (a local folder into s3://), landing whole at `dst` or not at all."""
    with open_file(src) as reader, atomic_write(dst) as writer:
        shutil.copyfileobj(reader, writer, chunk)


def write_bytes(url: str, data: bytes) -> None:
    with atomic_write(url) as f:
        f.write(data)


def read_bytes(url: str) -> bytes:
    with open_file(url) as f:
        return f.read()


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def move(src: str, dst: str) -> None:
    fs, src_path = get_fs(src)
    _, dst_path = get_fs(dst)
    fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
    fs.mv(src_path, dst_path, recursive=True)


def remove(url: str) -> None:
    """Delete a file or directory tree; missing paths are fine."""
    fs, path = get_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def is_committed(directory: str) -> bool:
    return exists(join(directory, SUCCESS))


def commit(directory: str, stats: dict[str, Any] | None = None) -> None:
    """Mark `directory` complete; the marker holds the stage's stats as JSON."""
    write_json(join(directory, SUCCESS), stats or {})


def committed_stats(directory: str) -> dict[str, Any]:
    return read_json(join(directory, SUCCESS))


def temp_sibling(url: str) -> str:
    """A fresh temporary name next to `url`, for write-then-rename of directories."""
    parent, name = posixpath.split(url.rstrip("/"))
    return join(parent, f"_tmp-{name}-{uuid.uuid4().hex[:12]}")


def check_writable(url: str) -> None:
    """Fail early, naming the path, when the storage root cannot be written."""
    probe = join(url, f".write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"")
        remove(probe)
    except (OSError, StorageError) as exc:
        raise StorageError(f"storage path {url} is not writable: {exc}") from exc


def ensure_root(url: str) -> None:
    """Create the storage root (on S3, its bucket when missing) and check that it can be written."""
    fs, path = get_fs(url)
    if url.startswith(("s3://", "s3a://")):
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            try:
                fs.mkdir(bucket)
            except OSError as exc:
                raise StorageError(f"cannot create bucket {bucket} of storage root {url}: {exc}") from exc
    else:
        makedirs(url)
    check_writable(url)
