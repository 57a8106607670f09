"""One archive to a Parquet file of decoded flows, its rejects and a reconciliation summary.

An archive spans all days, so it is parsed once per content hash, streaming block by
block in bounded memory; the daily assets then read their day from every staged file.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iot_assets import catalogue
from iot_assets.archive import ArchiveError, ArchiveFile, open_json_member
from iot_assets.decode import DECODED_SCHEMA, REJECTS_SCHEMA, Reject, decode_block, iter_blocks

PARQUET_OPTIONS = dict(compression="snappy")


@dataclass
class ArchiveSummary:
    """Counts that reconcile an archive: lines = flow_records + stats + tombstones."""

    archive: str
    device: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    parts: int = 1
    lines: int = 0
    flow_records: int = 0
    stats_exported: int | None = None
    stats_lines: int = 0
    tombstone_lines: int = 0
    decoded: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    days: dict[str, int] = field(default_factory=dict)
    mac_counts: dict[str, int] = field(default_factory=dict)
    local_mac: str | None = None
    dominant_mac: str | None = None
    unknown_fields: list[str] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def reconciled(self) -> bool:
        return (
            self.error is None
            and self.decoded + self.rejected == self.flow_records
            and self.stats_exported == self.flow_records
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ArchiveSummary":
        return cls(**data)


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


def _count_macs(table: pa.Table, counts: Counter) -> None:
    for column in ("src_mac", "dst_mac"):
        for item in pc.value_counts(table.column(column)).to_pylist():
            counts[item["values"]] += item["counts"]


def _is_host_mac(mac: str) -> bool:
    """A unicast MAC that is not the home gateway: a candidate for the archive's device."""
    first_octet = int(mac[:2], 16)
    return mac != catalogue.GATEWAY_MAC and not first_octet & 1 and mac != "00:00:00:00:00:00"


def _decode_blocks(stream, archive: str, first_day: date, last_day: date, workers: int = 2):
    """Decoded blocks in order, two decoding at once: one block's conversion fills the
    gaps in the next one's parse."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for block, first_line in iter_blocks(stream):
            pending.append(pool.submit(decode_block, block, first_line, archive, first_day, last_day))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def decode_archive(
    archive: ArchiveFile,
    out_dir: Path,
    first_day: date,
    last_day: date,
    sha256: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ArchiveSummary:
    """Decode `archive` into `out_dir` (replaced atomically): flows.parquet, rejects.parquet, summary.json.

    Archive-level damage (truncated gzip, corrupt tar, unsafe member) ends the archive with
    `error` set; the lines decoded before it are kept and counted, so nothing goes unaccounted.
    """
    device = catalogue.BY_ARCHIVE.get(archive.name)
    summary = ArchiveSummary(
        archive=archive.name,
        device=device.name if device else None,
        sha256=sha256 or archive.sha256(),
        size_bytes=archive.size_bytes,
        parts=len(archive.parts),
    )
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    flows = _FlowWriter(tmp / "flows.parquet")
    rejects: list[Reject] = []
    reasons: Counter[str] = Counter()
    macs: Counter[str] = Counter()
    unknown: set[str] = set()
    try:
        with open_json_member(archive) as stream:
            for decoded in _decode_blocks(stream, archive.name, first_day, last_day):
                summary.lines += decoded.lines
                summary.stats_lines += len(decoded.stats)
                summary.tombstone_lines += decoded.tombstones
                for stats in decoded.stats:
                    summary.stats_exported = stats.get("exportedFlowTotalCount")
                summary.decoded += decoded.flows.num_rows
                rejects.extend(decoded.rejects)
                reasons.update(r.reason for r in decoded.rejects)
                unknown |= decoded.unknown_fields
                _count_macs(decoded.flows, macs)
                flows.add(decoded.flows)
                if on_progress:
                    on_progress(decoded.size_bytes)
    except ArchiveError as exc:
        summary.error = exc.message
    except (EOFError, OSError, ValueError) as exc:
        # isal and tarfile report truncation and corruption while streaming.
        summary.error = f"damaged after line {summary.lines}: {exc}"
    finally:
        flows.close()
    if summary.stats_lines > 1:
        summary.warnings.append(f"{summary.stats_lines} stats records; the last one is used")
    if summary.stats_lines == 0 and summary.error is None:
        summary.warnings.append("no stats record: the archive cannot be reconciled")

    summary.flow_records = summary.lines - summary.stats_lines - summary.tombstone_lines
    summary.rejected = len(rejects)
    summary.rejects_by_reason = dict(sorted(reasons.items()))
    summary.days = dict(sorted(flows.rows_per_day.items()))
    summary.unknown_fields = sorted(unknown)
    hosts = Counter({mac: n for mac, n in macs.items() if _is_host_mac(mac)})
    summary.mac_counts = dict(hosts.most_common(20))
    summary.dominant_mac = hosts.most_common(1)[0][0] if hosts else None
    summary.local_mac = device.mac if device else summary.dominant_mac
    if device and summary.dominant_mac and summary.dominant_mac != device.mac:
        summary.warnings.append(
            f"the dominant MAC {summary.dominant_mac} is not {device.name}'s catalogue MAC {device.mac}"
        )

    reject_table = pa.table(
        {
            "archive": [archive.name] * len(rejects),
            "line_number": [r.line_number for r in rejects],
            "reason": [r.reason for r in rejects],
            "detail": [r.detail for r in rejects],
        },
        schema=REJECTS_SCHEMA,
    )
    pq.write_table(reject_table, tmp / "rejects.parquet", **PARQUET_OPTIONS)
    (tmp / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return summary


def read_summary(staged_dir: Path) -> ArchiveSummary | None:
    path = staged_dir / "summary.json"
    if not path.exists():
        return None
    return ArchiveSummary.from_json(json.loads(path.read_text()))
