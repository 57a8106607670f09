"""The landing zone and the staged archives.

An archive spans every day, so it is decoded once per content hash (and date range, which
decides what is rejected as outside it) into `<base>/staging/<archive>/<sha16>_<first>_<last>/`
(flows.parquet, rejects.parquet, summary.json); the daily assets read their day from there.
With pseudonymisation on, the staged flows already hold pseudonyms and the folder name ends in
`_p<fingerprint>` of the key and its settings, so another key stages the archive anew.
Decoding happens in a private work folder and the result is published whole, so a run never
sees, or deletes, another run's work in progress.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow as pa
from upath import UPath

from iot_assets.contracts.flows import DECODED_SCHEMA
from iot_assets.core.archive import ArchiveError, ArchiveFile, find_archives, is_plain_name
from iot_assets.core.ingest import ArchiveSummary, decode_archive
from iot_assets.core.pseudonymiser import Pseudonymiser
from iot_assets.io.lake import read_parquet
from iot_assets.io.location import base_path, local_path, put_directory, remove_tree

WORK = ".work"
STALE_WORK_SECONDS = 24 * 3600  # a work folder of another host this old belongs to a run that died
_WORK_NAME = re.compile(r"^(?P<host>[^~]+)~(?P<pid>\d+)(~[0-9a-f]+)?$")


def work_folder_name(pid: int) -> str:
    """`<host>~<pid>`: whose work a folder under `.work` is, so that a dead process's is known as such."""
    return f"{socket.gethostname()}~{pid}"


def work_is_abandoned(name: str, age_seconds: float) -> bool:
    """A work folder whose process (on this host) is gone; of another host, or unnamed, once it is a day old."""
    from iot_assets.io.lock import process_alive

    match = _WORK_NAME.match(name)
    if match and match["host"] == socket.gethostname():
        return not process_alive(int(match["pid"]))
    return age_seconds > STALE_WORK_SECONDS


class ArchiveStore(dg.ConfigurableResource):
    """Finds archives in `<base>/raw`, stages each once per content hash, reads a day back."""

    base_url: str
    first_day: str
    last_day: str
    # applied to each block as it decodes (a resource dependency: this module has no postponed annotations,
    # which Dagster would not resolve)
    pseudonymiser: dg.ResourceDependency[Pseudonymiser]
    max_reject_share: float = 0.5  # IOT_ASSETS_MAX_REJECT_SHARE

    @property
    def landing(self) -> UPath:
        return base_path(self.base_url) / "raw"

    @property
    def staging(self) -> UPath:
        return base_path(self.base_url) / "staging"

    @property
    def days(self) -> tuple[date, date]:
        return date.fromisoformat(self.first_day), date.fromisoformat(self.last_day)

    def find(self) -> tuple[list[ArchiveFile], list[ArchiveError]]:
        if not self.landing.exists():
            return [], []
        return find_archives(self.landing)

    def fingerprint(self) -> str:
        """Names, sizes and modification times of the archive files: cheap, no reading."""
        if not self.landing.exists():
            return ""
        entries = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in self.landing.iterdir()
                         if ".tar.gz" in p.name)
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20] if entries else ""

    def staged_key(self, archive: ArchiveFile, sha256: str) -> str:
        """`<archive>/<version>`: one folder inside staging/ (a name that would leave it raises)."""
        if not is_plain_name(archive.name):
            raise ValueError(f"{archive.name!r} is not a plain device name: it cannot be staged")
        key = f"{archive.name}/{sha256[:16]}_{self.first_day}_{self.last_day}"
        fingerprint = self.pseudonymiser.fingerprint if self.pseudonymiser is not None else ""
        return f"{key}_p{fingerprint}" if fingerprint else key

    def read_summary(self, key: str) -> ArchiveSummary | None:
        path = self.staging / key / "summary.json"
        return ArchiveSummary.from_json(json.loads(path.read_text())) if path.exists() else None

    def stage(self, archive: ArchiveFile, log=None) -> tuple[ArchiveSummary, str, bool]:
        """(summary, staged key, decoded now): decode `archive` unless this content is staged already."""
        sha = archive.sha256()
        key = self.staged_key(archive, sha)
        summary = self.read_summary(key)
        if summary is not None:
            return summary, key, False
        if log:
            log.info(f"decoding {archive.name} ({archive.size_bytes:,} bytes, {len(archive.parts)} part(s))")
        first, last = self.days
        local = local_path(self.staging)
        work_root = local / WORK if local is not None else Path(tempfile.gettempdir()) / "iot-assets-work"
        work = work_root / f"{work_folder_name(os.getpid())}~{uuid.uuid4().hex}"
        work.mkdir(parents=True)
        try:
            summary = decode_archive(archive, work / "staged", first, last, sha256=sha, pseudonymiser=self.pseudonymiser)
            put_directory(work / "staged", self.staging / key)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return summary, key, True

    def collect_garbage(self, keep: set[str]) -> list[str]:
        """Remove staged versions no current archive refers to, and work folders of dead runs."""
        removed = []
        if not self.staging.exists():
            return removed
        for archive_dir in self.staging.iterdir():
            if archive_dir.name == WORK:
                for work in archive_dir.iterdir():
                    if work_is_abandoned(work.name, time.time() - work.stat().st_mtime):
                        remove_tree(work)
                continue
            for version in archive_dir.iterdir():
                key = f"{archive_dir.name}/{version.name}"
                # Only published versions: a folder without a summary may be another run's upload.
                if key not in keep and (version / "summary.json").exists():
                    remove_tree(version)
                    removed.append(key)
            if not any(archive_dir.iterdir()):
                remove_tree(archive_dir)
        return removed

    def read_day(self, staged_key: str, day: str) -> pa.Table:
        """The decoded flows of `day` in one staged archive, pruned by row-group statistics."""
        from iot_assets.contracts.calendar import day_bounds

        start, end = day_bounds(day)
        path = self.staging / staged_key / "flows.parquet"
        if not path.exists():
            raise FileNotFoundError(f"staged file {path} is missing: re-stage the archive "
                                    f"(materialize raw_archives after removing its staging folder)")
        return read_parquet(path, filters=[("flow_start", ">=", start), ("flow_start", "<", end)], schema=DECODED_SCHEMA)
