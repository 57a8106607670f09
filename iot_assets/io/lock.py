"""One writer per data location: a lock held by the process that does the work.

`iot-assets run` holds it for its whole run; the lock is an `fcntl` lock on a file in the data
folder, so it dies with its holder (kill -9 included) and a second run, from any Dagster instance,
sees who holds it. An object-store location keeps the lock file in the Dagster instance folder
instead (an object store has no locks): then one instance per location is the operator's promise.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class LocationBusy(RuntimeError):
    pass


class DataLocationLock:
    def __init__(self, folder: Path, location: str):
        self.path = folder / ".iot-assets.lock"
        self.location = location
        self._handle = None

    def __enter__(self) -> "DataLocationLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process"
            handle.close()
            raise LocationBusy(f"{self.location} is in use by {holder}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def process_alive(pid: int) -> bool:
    """Whether a process of this host with `pid` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
