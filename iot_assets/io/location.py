"""One base location for every artifact: a local folder or an object-store URL (`s3://bucket/prefix`).

Object stores are reached through fsspec (s3fs), with the endpoint and keys from the standard
`AWS_*` variables (`AWS_ENDPOINT_URL` for an S3-compatible server).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from upath import UPath


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def base_path(url: str) -> UPath:
    """The base location as a UPath; a local folder is resolved to an absolute path."""
    if is_local(url):
        return UPath(Path(url.removeprefix("file://")).resolve())
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        options["endpoint_url"] = endpoint
    return UPath(url, **options)


def local_path(path: UPath) -> Path | None:
    """The local filesystem path behind `path`, or None when it lives in an object store."""
    return Path(path.path) if path.protocol in ("", "file", "local") else None


def write_bytes_atomic(path: UPath, data: bytes) -> None:
    """Readers never see half a file: locally a temporary name then a rename; an object-store PUT
    is atomic by itself."""
    local = local_path(path)
    if local is None:
        path.write_bytes(data)
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, local)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(local, len(data)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DiskFullError(OSError):
    """A write that did not fit: one line naming the file and the free space. The old file is intact."""

    def __init__(self, path: Path, size: int):
        free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
        super().__init__(errno.ENOSPC, f"no space left on device writing {path} ({size:,} bytes; "
                                       f"{free:,} bytes free): free some space and run again")


def write_text_atomic(path: UPath, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def put_directory(source: Path, target: UPath) -> None:
    """Publish a finished local directory at `target`, replacing what was there.

    Locally a rename (atomic); in an object store the files are uploaded with `summary.json`
    last, so a reader that finds the summary finds every other file.
    """
    local = local_path(target)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        old = local.with_name(f".{local.name}.old-{uuid.uuid4().hex}")
        if local.exists():
            os.replace(local, old)
        os.replace(source, local)
        shutil.rmtree(old, ignore_errors=True)
        return
    files = sorted(source.iterdir(), key=lambda p: p.name == "summary.json")
    for file in files:
        target.fs.put_file(str(file), f"{target.path}/{file.name}")
    shutil.rmtree(source, ignore_errors=True)


def remove_tree(path: UPath) -> None:
    local = local_path(path)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)
