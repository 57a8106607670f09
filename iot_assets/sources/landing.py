"""Collector files in the landing zone: every nfcapd.YYYYMMDDhhmm and *.ipfix file anywhere
under `raw/`, read into unidirectional records with one ledger per file.

A file that cannot be read gets a failed ledger naming it (`FileLedger.failed`) and the other
files are still read. The day's biflows are then `biflows.flows_for_day(records, day)`:
whatever file holds a record, the biflow lands in the day its flow starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from iot_assets.sources import ipfix_file, nfcapd
from iot_assets.sources.biflows import FLOW_SCHEMA, REJECTS, FileLedger, SourceFileError


@dataclass
class LandedFiles:
    """What the collector files under a landing zone hold."""

    records: pa.Table  # FLOW_SCHEMA, unidirectional, every file's
    rejects: pa.Table  # REJECTS_SCHEMA
    ledgers: list[FileLedger]  # one per file, in path order; `error` set for a file that could not be read


def find_collector_files(raw: Path) -> list[tuple[str, Path]]:
    """(source, path) of every collector file under `raw`: source `nfcapd` or `ipfix`, in path order."""
    found = [("nfcapd", p) for p in nfcapd.find_nfcapd_files(raw)] + [("ipfix", p) for p in
                                                                      ipfix_file.find_ipfix_files(raw)]
    return sorted(found, key=lambda item: str(item[1]))


def read_landing_zone(raw: Path) -> LandedFiles:
    """Read every collector file under `raw`, each named by its path under `raw`
    (`router-1/nfcapd.201906250000`); `ToolMissing` if nfcapd files are there and nfdump is not."""
    raw = Path(raw)
    files = find_collector_files(raw)
    names = [str(path.relative_to(raw)) for _, path in files]
    results: dict[str, object] = {}
    nfcapd_files = [(path, name) for (source, path), name in zip(files, names) if source == "nfcapd"]
    if nfcapd_files:
        read, errors = nfcapd.read_nfcapd_files([p for p, _ in nfcapd_files], names=[n for _, n in nfcapd_files])
        results.update({r.ledger.file: r for r in read})
        results.update({e.file: FileLedger.failed(e, "nfcapd", (raw / e.file).stat().st_size) for e in errors})
    for (source, path), name in zip(files, names):
        if source == "ipfix":
            try:
                results[name] = ipfix_file.read_ipfix_file(path, name)
            except SourceFileError as exc:
                results[name] = FileLedger.failed(exc, "ipfix", path.stat().st_size)
    tables, rejects, ledgers = [FLOW_SCHEMA.empty_table()], [REJECTS.empty_table()], []
    for name in names:
        item = results[name]
        if isinstance(item, FileLedger):
            ledgers.append(item)
        else:
            tables.append(item.records)
            rejects.append(item.rejects)
            ledgers.append(item.ledger)
    return LandedFiles(pa.concat_tables(tables), pa.concat_tables(rejects), ledgers)
