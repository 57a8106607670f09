"""Collector files in the landing zone (nfcapd.YYYYMMDDhhmm, *.ipfix anywhere under `<base>/raw`),
each read once per content hash into `<base>/staging/collectors/<key>/`
(records.parquet, rejects.parquet, ledger.json; `ledger.json` written last, so a folder
with a ledger is complete). The key is made of a hash of the file's name under raw/ and of
its content: a file rotated in again under the same name with other bytes is read again,
and two routers' files of the same name are kept apart.

The daily collector flows read the staged records of the files that hold the day's records
(the ledger's `days`), pruned by row-group statistics on `flow_start`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from upath import UPath

from iot_assets.io.lake import read_parquet
from iot_assets.io.location import base_path, local_path, put_directory, remove_tree
from iot_assets.sources import ipfix_file, nfcapd
from iot_assets.sources.biflows import FLOW_SCHEMA, REJECTS, FileLedger, SourceFileError

COLLECTORS = "collectors"
LEDGER = "ledger.json"
_READ_CHUNK_BYTES = 1 << 20


@dataclass
class CollectorFile:
    """A collector file found under raw/: its source (nfcapd | ipfix), its name under raw/ and where it is."""

    source: str
    name: str
    path: UPath


@dataclass
class StagedFile:
    """A collector file read (now or before): its ledger, content hash and staged key."""

    ledger: FileLedger
    sha256: str
    staged_key: str
    read_now: bool


class CollectorStore:
    """Finds the collector files of a base location, stages each once per content, reads days back."""

    def __init__(self, base_url: str):
        self.base = base_path(base_url)
        self.landing = self.base / "raw"
        self.staging = self.base / "staging" / COLLECTORS

    def find(self) -> list[CollectorFile]:
        """Every collector file under raw/, in name order."""
        local = local_path(self.landing)
        if not self.landing.exists():
            return []
        if local is None:  # an object store: the same name rules on the listing
            names = sorted(str(p.relative_to(self.landing)) for p in self.landing.rglob("*") if p.is_file())
            return [CollectorFile(_source_of(Path(n)), n, self.landing / n) for n in names if _source_of(Path(n))]
        found = [("nfcapd", p) for p in nfcapd.find_nfcapd_files(local)] + \
                [("ipfix", p) for p in ipfix_file.find_ipfix_files(local)]
        files = [CollectorFile(source, str(p.relative_to(local)), self.landing / str(p.relative_to(local)))
                 for source, p in found]
        return sorted(files, key=lambda f: f.name)

    def fingerprint(self) -> str:
        """Names, sizes and modification times of the collector files: cheap, no reading ("" when none)."""
        entries = sorted((f.name, f.path.stat().st_size, int(f.path.stat().st_mtime)) for f in self.find())
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20] if entries else ""

    def stage(self, found: CollectorFile, log=None) -> StagedFile:
        """Read `found` unless this content is staged already; a file the reader cannot read is staged
        as a failed ledger (the same bytes fail the same way). `ToolMissing` propagates: it is not the file's fault."""
        sha = _sha256(found.path)
        key = f"{hashlib.sha256(found.name.encode()).hexdigest()[:12]}_{sha[:16]}"
        ledger_path = self.staging / key / LEDGER
        if ledger_path.exists():
            return StagedFile(FileLedger.from_json(json.loads(ledger_path.read_text())), sha, key, False)
        if log:
            log.info(f"reading {found.name} ({found.source})")
        work = Path(tempfile.mkdtemp(prefix="iot-assets-collector-"))
        try:
            source_file = local_path(found.path)
            if source_file is None:  # nfdump and the IPFIX reader read local files
                source_file = work / Path(found.name).name
                found.path.fs.get_file(found.path.path, str(source_file))
            records, rejects, ledger = _read(found.source, Path(source_file), found.name)
            staged = work / "staged"
            staged.mkdir()
            pq.write_table(records.sort_by("flow_start"), staged / "records.parquet", row_group_size=64_000)
            pq.write_table(rejects, staged / "rejects.parquet")
            (staged / LEDGER).write_text(json.dumps(ledger.to_json()))
            put_directory(staged, self.staging / key)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return StagedFile(ledger, sha, key, True)

    def read_records(self, staged_keys: list[str], start: datetime, end: datetime) -> pa.Table:
        """The staged records of the files given whose `flow_start` is in [start, end): one dataset
        scan over the files (a day of 5-minute files is 288 small files; one read each is 20 times slower)."""
        paths = [self.staging / key / "records.parquet" for key in staged_keys]
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"staged collector file {path} is missing: materialize collector_files again")
        if not paths:
            return FLOW_SCHEMA.empty_table()
        start_type = FLOW_SCHEMA.field("flow_start").type
        when = (ds.field("flow_start") >= pa.scalar(start, start_type)) & (ds.field("flow_start") < pa.scalar(end, start_type))
        dataset = ds.dataset([p.path for p in paths], schema=FLOW_SCHEMA, format="parquet", filesystem=paths[0].fs)
        return dataset.to_table(filter=when)

    def read_rejects(self, staged_key: str) -> pa.Table:
        return read_parquet(self.staging / staged_key / "rejects.parquet", schema=REJECTS)

    def collect_garbage(self, keep: set[str]) -> list[str]:
        """Remove staged files no current collector file refers to (complete ones only: with a ledger)."""
        removed = []
        if not self.staging.exists():
            return removed
        for staged in self.staging.iterdir():
            if staged.name not in keep and (staged / LEDGER).exists():
                remove_tree(staged)
                removed.append(staged.name)
        return removed


def day_window(day: str, margin_ms: int) -> tuple[datetime, datetime]:
    """The UTC bounds of `day` widened by `margin_ms` on both sides (a biflow's two records can
    straddle midnight: the stitching needs the records just before and just after the day)."""
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    margin = timedelta(milliseconds=margin_ms)
    return start - margin, start + timedelta(days=1) + margin


def _source_of(path: Path) -> str | None:
    if nfcapd.NFCAPD_NAME.match(path.name):
        return "nfcapd"
    if path.name.endswith(ipfix_file.IPFIX_SUFFIXES):
        return "ipfix"
    return None


def _read(source: str, path: Path, name: str) -> tuple[pa.Table, pa.Table, FileLedger]:
    """(records, rejects, ledger) of one file; a file that cannot be read gives a failed ledger."""
    size = path.stat().st_size
    try:
        if source == "nfcapd":
            read = nfcapd.read_nfcapd_file(path, name=name)
        else:
            read = ipfix_file.read_ipfix_file(path, name)
    except SourceFileError as exc:
        return FLOW_SCHEMA.empty_table(), REJECTS.empty_table(), FileLedger.failed(exc, source, size)
    return read.records, read.rejects, read.ledger


def _sha256(path: UPath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
