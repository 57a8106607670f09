"""One archive to a Parquet file of decoded flows, its rejects and a reconciliation summary.

An archive spans all days, so it is parsed once per content hash, streaming block by
block in bounded memory; the daily assets then read their day from every staged file.

The ledger of an archive: every line of its JSON member is a flow line, a stats line or a
tombstone line; every flow line read is decoded or rejected; flow lines that could not be
read (after damage) are `unreadable`:

    decoded + rejected + unreadable = the flow lines of the archive = stats.exportedFlowTotalCount

`unreadable` is 0 when nothing is damaged. After damage it is known only if the stats
record was read (it is the archive's last lines, so usually it is lost with the damage):
then it is `stats_exported - flow_records`; otherwise it is None (unknown), `error` says
where the damage is, `member_bytes - member_bytes_read` says how many bytes were lost, and
the archive does not reconcile.

Pseudonymisation happens here, at the edge: each block is pseudonymised right after it
decodes (`Pseudonymiser.flows`), before it is written, so that nothing past this point holds
a subscriber's MAC or home address. The real MACs are counted in memory to tell the archive's
device; the summary names MACs by their pseudonyms (`local_macs` per key period; the other
MAC fields in the archive's last period).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import tempfile
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iot_assets.contracts import catalogue
from iot_assets.contracts.flows import DECODED_SCHEMA, REJECTS_SCHEMA
from iot_assets.core.archive import (
    MAX_INFLATED_BYTES,
    MAX_INFLATION_RATIO,
    ArchiveError,
    ArchiveFile,
    JsonMember,
    open_json_member,
)
from iot_assets.core.decode import (
    Block,
    decode_block,
    long_line_block,
)
from iot_assets.core.duplicates import RepeatedRecords
from iot_assets.core.line_blocks import MAX_LINE_BYTES, LongLine, iter_blocks

if TYPE_CHECKING:
    from iot_assets.core.pseudonymiser import Pseudonymiser

# Dictionary pages for the text columns only (MACs, addresses, names: few values), LZ4.
# Writing the three real archives' flows: 0.26 CPU s and 14.8 MB, against 0.35 s and
# 14.5 MB with snappy and dictionaries for every column (zstd level 1: 0.36 s, 7.5 MB).
PARQUET_OPTIONS = dict(compression="lz4",
                       use_dictionary=[f.name for f in DECODED_SCHEMA if pa.types.is_string(f.type)])


@dataclass
class ArchiveSummary:
    """Counts that reconcile an archive: lines = flow_records + stats_lines + tombstone_lines,
    flow_records = decoded + rejected, and decoded + rejected + unreadable = stats_exported."""

    archive: str
    device: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    parts: int = 1
    lines: int = 0  # lines of the JSON member read in full
    flow_records: int = 0  # of them, flow lines (every line that is not a stats or tombstone record)
    stats_exported: int | None = None  # the last stats record's exportedFlowTotalCount
    stats_lines: int = 0
    tombstone_lines: int = 0
    decoded: int = 0
    rejected: int = 0
    unreadable: int | None = 0  # flow lines lost to damage; None when unknown (see the module)
    damaged_at_line: int | None = None  # the first line not read in full; None when every line was read
    member_bytes: int | None = None  # size of the JSON member, from its tar header
    member_bytes_read: int = 0  # bytes of the member in the lines read
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    days: dict[str, int] = field(default_factory=dict)
    mac_counts: dict[str, int] = field(default_factory=dict)
    local_mac: str | None = None
    dominant_mac: str | None = None
    local_macs: dict[str, str] = field(default_factory=dict)  # key period -> the device's pseudonym; {} in clear
    unknown_fields: list[str] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def reconciled(self) -> bool:
        """Nothing damaged, and every flow line the stats record counts is decoded or rejected."""
        return (
            self.error is None
            and self.unreadable == 0
            and self.stats_exported is not None
            and self.decoded + self.rejected == self.flow_records
            and self.decoded + self.rejected + self.unreadable == self.stats_exported
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ArchiveSummary":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class _FlowWriter:
    """One Parquet file per archive, a row group per block sorted by start time.

    Records are nearly in time order, so each row group spans a few days and a daily
    read prunes the rest by the row groups' min/max statistics. Writing runs in its own
    thread (Parquet encoding releases the GIL) so that it overlaps with parsing.
    """

    def __init__(self, path: Path):
        self.rows_per_day: Counter[str] = Counter()
        self._writer = pq.ParquetWriter(path, DECODED_SCHEMA, **PARQUET_OPTIONS)
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)
        self._thread.start()

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        days = pc.divide(table.column("flow_start").cast(pa.int64()), 86_400_000)
        for item in pc.value_counts(days).to_pylist():
            self.rows_per_day[(date(1970, 1, 1) + timedelta(days=item["values"])).isoformat()] += item["counts"]
        if self._error:
            raise self._error
        self._queue.put(table)

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table.sort_by("flow_start"))
                except BaseException as exc:  # raised in the decoding thread
                    self._error = exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        if self._error:
            raise self._error


class _RejectWriter:
    """Rejects go to their Parquet file block by block; only their counts stay in memory.

    Line numbers are delta-encoded: a million rejected lines in a row take a few KB.
    """

    def __init__(self, path: Path):
        self.count = 0
        self.by_reason: Counter[str] = Counter()
        self._writer = pq.ParquetWriter(
            path, REJECTS_SCHEMA, compression="snappy", use_dictionary=["archive", "reason", "detail"],
            column_encoding={"line_number": "DELTA_BINARY_PACKED"},
        )

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.count += table.num_rows
        for item in pc.value_counts(table.column("reason")).to_pylist():
            self.by_reason[item["values"]] += item["counts"]
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


def _count_macs(table: pa.Table, counts: Counter) -> None:
    for column in ("src_mac", "dst_mac"):
        for item in pc.value_counts(table.column(column)).to_pylist():
            counts[item["values"]] += item["counts"]


def _is_host_mac(mac: str) -> bool:
    """A unicast MAC that is not the home gateway: a candidate for the archive's device."""
    first_octet = int(mac[:2], 16)
    return mac != catalogue.GATEWAY_MAC and not first_octet & 1 and mac != "00:00:00:00:00:00"


def _decode_blocks(stream, archive: str, first_day: date, last_day: date, max_line_bytes: int, workers: int = 2):
    """Decoded blocks in order, two decoding at once (each block's parse is on one core),
    and one more waiting, so that both threads stay busy while a decoded block is being
    added. An error while reading is raised after every block read before it has been
    decoded and yielded."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        error: Exception | None = None
        try:
            for item in iter_blocks(stream, max_line_bytes=max_line_bytes):
                if isinstance(item, LongLine):
                    pending.append(pool.submit(long_line_block, item.line_number, item.length_bytes, archive))
                else:
                    block, first_line = item
                    pending.append(pool.submit(decode_block, block, first_line, archive, first_day, last_day))
                if len(pending) > workers:
                    yield pending.popleft().result()
        except Exception as exc:  # raised by the reader: the blocks read before it still count
            error = exc
        while pending:
            yield pending.popleft().result()
        if error is not None:
            raise error


class _WriteFailed(Exception):
    """Writing the staged files failed (a full disk): not the archive's fault, raised as is."""


def _new_staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Put `tmp` in the place of `out_dir`: readers see the old directory or the new one."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def decode_archive(
    archive: ArchiveFile,
    out_dir: Path,
    first_day: date,
    last_day: date,
    sha256: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    *,
    max_inflated_bytes: int | None = MAX_INFLATED_BYTES,
    max_inflation_ratio: float | None = MAX_INFLATION_RATIO,
    max_line_bytes: int = MAX_LINE_BYTES,
    pseudonymiser: Pseudonymiser | None = None,
) -> ArchiveSummary:
    """Decode `archive` into the local `out_dir` (replaced atomically): flows.parquet,
    rejects.parquet, summary.json.

    Never raises for what the archive holds. A bad record is a reject; damage (what the
    gzip stream or the tar container reports, or inflation past the caps, see
    `iot_assets.core.archive`) ends the archive with `error` set and `damaged_at_line`, and
    every line read before it is decoded and counted. Errors writing `out_dir` (a full
    disk) are raised. With an enabled `pseudonymiser` the files hold pseudonyms only.
    """
    device = catalogue.BY_ARCHIVE.get(archive.name)
    summary = ArchiveSummary(archive=archive.name, device=device.name if device else None, parts=len(archive.parts))
    tmp = _new_staging_dir(out_dir)
    try:
        _decode_into(archive, tmp, summary, first_day, last_day, sha256, on_progress,
                     max_inflated_bytes, max_inflation_ratio, max_line_bytes, pseudonymiser)
        (tmp / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _decode_into(archive: ArchiveFile, tmp: Path, summary: ArchiveSummary, first_day: date, last_day: date,
                 sha256: str | None, on_progress, max_inflated_bytes, max_inflation_ratio, max_line_bytes,
                 pseudonymiser: Pseudonymiser | None = None) -> None:
    flows = _FlowWriter(tmp / "flows.parquet")
    rejects = _RejectWriter(tmp / "rejects.parquet")
    macs: Counter[str] = Counter()
    unknown: set[str] = set()
    stats_problems: list[str] = []
    member: JsonMember | None = None
    repeated = RepeatedRecords()
    try:
        summary.size_bytes = archive.size_bytes
        summary.sha256 = sha256 or archive.sha256()
        with open_json_member(archive, max_inflated_bytes, max_inflation_ratio) as member:
            summary.member_bytes = member.size
            for block in _decode_blocks(member, archive.name, first_day, last_day, max_line_bytes):
                _add_block(summary, block, flows, rejects, macs, unknown, stats_problems, repeated, pseudonymiser)
                if on_progress:
                    on_progress(block.size_bytes)
    except _WriteFailed as exc:
        raise exc.__cause__ from None
    except ArchiveError as exc:
        _record_damage(summary, exc.message, member)
    except OSError as exc:  # a part that vanished or cannot be read
        _record_damage(summary, f"cannot read the archive: {exc}", member)
    except Exception as exc:  # whatever else reading raised: the archive's error, not the run's
        _record_damage(summary, f"unexpected error while reading ({type(exc).__name__}: {exc})", member)
    finally:
        flows.close()
        rejects.close()

    summary.flow_records = summary.lines - summary.stats_lines - summary.tombstone_lines
    summary.rejected = rejects.count
    summary.rejects_by_reason = dict(sorted(rejects.by_reason.items()))
    if summary.error is None:
        summary.unreadable = 0
    elif summary.stats_exported is not None and summary.stats_exported >= summary.flow_records:
        summary.unreadable = summary.stats_exported - summary.flow_records
    else:
        summary.unreadable = None
    summary.warnings.extend(stats_problems)
    if summary.stats_lines > 1:
        summary.warnings.append(f"{summary.stats_lines} stats records; the last one is used")
    if summary.stats_lines == 0 and summary.error is None:
        summary.warnings.append("no stats record: the archive cannot be reconciled")
    summary.days = dict(sorted(flows.rows_per_day.items()))
    summary.unknown_fields = sorted(unknown)
    hosts = Counter({mac: n for mac, n in macs.items() if _is_host_mac(mac)})
    dominant = hosts.most_common(1)[0][0] if hosts else None
    device = catalogue.BY_ARCHIVE.get(archive.name)
    local = device.mac if device else dominant
    # Real MACs are named by their pseudonyms from here on (the last period's; `local_macs` per period).
    name = _mac_names(pseudonymiser, summary.days, last_day)
    summary.mac_counts = {name(mac): n for mac, n in hosts.most_common(20)}
    summary.dominant_mac = name(dominant)
    summary.local_mac = name(local)
    if pseudonymiser is not None and pseudonymiser.enabled and local is not None:
        periods = sorted({pseudonymiser.period(day) for day in summary.days} or {pseudonymiser.period(last_day)})
        summary.local_macs = {p: pseudonymiser.mac_in_period(local, p) for p in periods}
    if device and dominant and dominant != device.mac:
        summary.warnings.append(
            f"the dominant MAC {name(dominant)} is not {device.name}'s catalogue MAC {name(device.mac)}"
        )


def _mac_names(pseudonymiser: Pseudonymiser | None, days: dict[str, int], last_day: date):
    """How the summary names a real MAC: itself in clear, else its pseudonym in the archive's last period."""
    if pseudonymiser is None or not pseudonymiser.enabled:
        return lambda mac: mac
    period = pseudonymiser.period(max(days) if days else last_day)
    return lambda mac: None if mac is None else pseudonymiser.mac_in_period(mac, period)


def _add_block(summary: ArchiveSummary, block: Block, flows: _FlowWriter, rejects: _RejectWriter, macs: Counter,
               unknown: set[str], stats_problems: list[str], repeated: RepeatedRecords,
               pseudonymiser: Pseudonymiser | None = None) -> None:
    summary.lines += block.lines
    summary.member_bytes_read += block.size_bytes
    summary.tombstone_lines += block.tombstones
    if block.stats_lines:
        summary.stats_lines += block.stats_lines
        summary.stats_exported = block.stats_exported
    if len(stats_problems) < 10:
        stats_problems.extend((block.stats_problems + block.warnings)[: 10 - len(stats_problems)])
    # A record equal to an earlier line's is a reject naming that line, not a second flow.
    new_flows, repeats = repeated.split(block.flows, summary.archive)
    summary.decoded += new_flows.num_rows
    if len(unknown) < 100:
        unknown |= block.unknown_fields
    _count_macs(new_flows, macs)  # real MACs, in memory only: they tell the archive's device
    decoded = new_flows if pseudonymiser is None else pseudonymiser.flows(new_flows)
    try:
        rejects.add(block.rejects)
        rejects.add(repeats)
        flows.add(decoded)
    except Exception as exc:
        raise _WriteFailed() from exc


def _record_damage(summary: ArchiveSummary, message: str, member: JsonMember | None) -> None:
    """The error names the line: the first one not read in full, or none when all were."""
    every_line_read = member is not None and summary.member_bytes_read >= member.size
    if every_line_read:
        summary.damaged_at_line = None
        summary.error = f"damaged after its last line (line {summary.lines:,}); every line was read: {message}"
    else:
        summary.damaged_at_line = summary.lines + 1
        read = (f"lines 1-{summary.lines:,} ({summary.member_bytes_read:,} of {member.size:,} bytes) were read"
                if member is not None and summary.lines else "no line was read")
        summary.error = f"damaged at line {summary.damaged_at_line:,}; {read}: {message}"


def read_summary(staged_dir: Path) -> ArchiveSummary | None:
    path = staged_dir / "summary.json"
    if not path.exists():
        return None
    return ArchiveSummary.from_json(json.loads(path.read_text()))
