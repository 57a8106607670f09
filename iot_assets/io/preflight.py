"""What `iot-assets run` checks before any work: the folders it writes exist, are writable and have room.

Each problem is one line that names the folder and the fix; the command prints them and exits 2,
instead of failing half-way through a run with a traceback (or forty follow-on failures).
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import tempfile
from pathlib import Path

GB = 1e9
FIX_LOCATION = "set IOT_ASSETS_DATA_DIR (or --data-dir) to a folder you can write"


def folder_problems(folder: Path, what: str, fix: str, min_free_gb: float | None = None) -> list[str]:
    """One line per problem of `folder` (created if missing): not creatable, not writable, short of space."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"the {what} {folder} cannot be created ({exc.strerror or exc}): create it, or {fix}"]
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        return [f"the {what} {folder} is not writable ({exc.strerror or exc}): make it writable, or {fix}"]
    if min_free_gb:
        free_gb = shutil.disk_usage(folder).free / GB
        if free_gb < min_free_gb:
            return [(f"the {what} {folder} has {free_gb:.2f} GB free, IOT_ASSETS_MIN_FREE_GB={min_free_gb:g} asks "
                     f"for {min_free_gb:g} GB: free some space, or lower IOT_ASSETS_MIN_FREE_GB")]
    return []


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_ENVIRONMENT_SQLITE = ("disk is full", "readonly database", "unable to open database", "disk i/o error")


def environment_problem(exc: BaseException) -> str | None:
    """A one-line description if `exc` is the environment's (a full disk, a read-only folder), else None.

    Dagster's storage raises SQLAlchemy's OperationalError around sqlite3's: the cause is looked through.
    """
    seen = exc
    while seen is not None:
        original = getattr(seen, "orig", None)  # sqlalchemy.exc.DBAPIError
        if original is not None:
            seen = original
        if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT_ERRNOS:
            return f"{seen} ({type(seen).__name__})"
        if isinstance(seen, sqlite3.OperationalError) and any(t in str(seen).lower() for t in _ENVIRONMENT_SQLITE):
            return f"{seen} (sqlite3.OperationalError)"
        seen = seen.__cause__ or seen.__context__
    return None
