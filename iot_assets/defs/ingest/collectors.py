"""Collector files (nfcapd, IPFIX) in the landing zone: a ledger per file, and the day's biflows.

`collector_files` reads every nfcapd.YYYYMMDDhhmm and *.ipfix file under raw/ once per content
hash and keeps a ledger per file, reconciled against the collector's own counts (nfdump -I for
nfcapd files, the data records counted in the file's sets for IPFIX files). `collector_flows[day]`
stitches the records of every file into biflows and keeps those that start on the day, with
the device each belongs to (`sources.biflows.device_identity`). `clean_flows` takes them as a
second input beside the archives' decoded flows.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from iot_assets.contracts import catalogue
from iot_assets.core.pseudonymiser import Pseudonymiser
from iot_assets.defs.ingest.assets import changed_days
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import Partitions
from iot_assets.defs.stages import DAILY_FLOWS, INGEST, stage
from iot_assets.io.collectors import CollectorStore, StagedFile, day_window
from iot_assets.io.lake import DaysBuilt
from iot_assets.io.reports import ReportFiles
from iot_assets.io.staging import ArchiveStore
from iot_assets.sources.biflows import FLOW_SCHEMA, STITCH_GAP_MS, device_identity, flows_for_day

LEDGER_COLUMNS = [
    "file", "source", "sha256", "staged_key", "size_bytes", "collector_records", "collector_packets",
    "collector_bytes", "decoded", "rejected", "decoded_packets", "decoded_bytes", "other_records",
    "sampling_rates", "rejects_by_reason", "rows_per_day", "error", "reconciled",
]
# What `collector_flows` adds to the decoded flow contract (and `sampling_rate`, in FLOW_SCHEMA).
IDENTITY_COLUMNS = ["device_key", "device_ip", "identity"]
COLLECTOR_FLOW_COLUMNS = [*FLOW_SCHEMA.names, *IDENTITY_COLUMNS]
# Addresses that are the home gateway, not a device: a flow from it belongs to its destination.
GATEWAY_IPS = frozenset({catalogue.GATEWAY_IP})
# The ledger columns shown in the UI's table (the hashes and JSON columns are in the stored table).
_SHOWN = ["file", "source", "collector_records", "decoded", "rejected", "decoded_packets", "decoded_bytes",
          "error", "reconciled"]
_STAGING_WORKERS = 2  # one file is parsed while nfdump reads the next


def ledger_table(staged: list[tuple[str, StagedFile]]) -> pd.DataFrame:
    """One row per collector file: its counts, where it is staged and whether it reconciles."""
    rows = []
    for name, item in staged:
        ledger = item.ledger
        rows.append({
            "file": name, "source": ledger.source, "sha256": item.sha256, "staged_key": item.staged_key,
            "size_bytes": ledger.size_bytes, "collector_records": ledger.collector_records,
            "collector_packets": ledger.collector_packets, "collector_bytes": ledger.collector_bytes,
            "decoded": ledger.decoded, "rejected": ledger.rejected, "decoded_packets": ledger.decoded_packets,
            "decoded_bytes": ledger.decoded_bytes, "other_records": ledger.other_records,
            "sampling_rates": json.dumps(ledger.sampling_rates), "rejects_by_reason": json.dumps(ledger.rejects_by_reason),
            "rows_per_day": json.dumps(ledger.days), "error": ledger.error, "reconciled": ledger.reconciled,
        })
    table = pd.DataFrame(rows, columns=LEDGER_COLUMNS)
    for column in ("collector_records", "collector_packets", "collector_bytes"):
        table[column] = table[column].astype("Int64")
    return table


def ledger_ui_table(ledger: pd.DataFrame) -> dg.MetadataValue:
    """The ledger as a table the UI renders."""
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string" if c in ("file", "source", "error") else
                                                    "bool" if c == "reconciled" else "int") for c in _SHOWN])
    records = [dg.TableRecord({c: (None if pd.isna(row[c]) else (bool(row[c]) if c == "reconciled" else
                                                                  row[c] if isinstance(row[c], str) else int(row[c])))
                               for c in _SHOWN}) for row in ledger.to_dict("records")]
    return dg.MetadataValue.table(records, schema=schema)


def reconcile_check(ledger: pd.DataFrame) -> dg.AssetCheckResult:
    """ERROR when a file is not decoded + rejected = the collector's count, or could not be read."""
    failed = {}
    for row in ledger.itertuples():
        if row.reconciled:
            continue
        if row.error:
            failed[row.file] = row.error
        elif pd.isna(row.collector_records):
            failed[row.file] = "the collector's record count is unknown"
        elif row.decoded + row.rejected != row.collector_records:
            failed[row.file] = (f"{row.decoded:,} decoded + {row.rejected:,} rejected of "
                                f"{int(row.collector_records):,} records the collector counts")
        else:
            failed[row.file] = (f"packets/bytes decoded {row.decoded_packets:,}/{row.decoded_bytes:,}, the collector "
                                f"counts {row.collector_packets}/{row.collector_bytes}")
    return dg.AssetCheckResult(
        check_name="collector_files_reconcile",
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{k}: {v}" for k, v in failed.items())[:2000] or
        f"every collector file reconciles ({len(ledger)} files)",
        metadata={
            "files": len(ledger),
            "failed": dg.MetadataValue.json(failed),
            "collector_records": int(ledger["collector_records"].fillna(0).sum()),
            "decoded": int(ledger["decoded"].sum()),
            "rejected": int(ledger["rejected"].sum()),
        },
    )


def staged_keys_for(ledger: pd.DataFrame, day: str) -> dict[str, int]:
    """The staged files holding records that start on `day` or next to it (the stitching reads a
    little of the days before and after), with the records each holds of `day` itself."""
    days = {day, *(str(d.date()) for d in (pd.Timestamp(day) - pd.Timedelta(days=1), pd.Timestamp(day) + pd.Timedelta(days=1)))}
    keys = {}
    for row in ledger.itertuples():
        per_day = json.loads(row.rows_per_day) if row.rows_per_day else {}
        if row.staged_key and days & set(per_day):
            keys[row.staged_key] = per_day.get(day, 0)
    return keys


def day_flows(store: CollectorStore, ledger: pd.DataFrame, day: str) -> tuple[pa.Table, dict[str, int], dict[str, int]]:
    """The biflows starting on `day` with their device identity; the records of `day` read per file
    and the records of `day` each file's ledger counts."""
    keys = staged_keys_for(ledger, day)
    start, end = day_window(day, STITCH_GAP_MS)
    records = store.read_records(sorted(keys), start, end)
    names = dict(zip(ledger["staged_key"], ledger["file"]))
    day_start, day_end = day_window(day, 0)
    on_day = records.filter(pc.and_(pc.greater_equal(records.column("flow_start"), pa.scalar(day_start, FLOW_SCHEMA.field("flow_start").type)),
                                    pc.less(records.column("flow_start"), pa.scalar(day_end, FLOW_SCHEMA.field("flow_start").type))))
    read = {item["values"]: item["counts"] for item in pc.value_counts(on_day.column("archive")).to_pylist()}
    expected = {names[key]: n for key, n in keys.items() if n}
    flows = flows_for_day(records, pd.Timestamp(day).date())
    identity = device_identity(flows, GATEWAY_IPS)
    for name in IDENTITY_COLUMNS:
        flows = flows.append_column(name, identity.column(name))
    return flows, read, expected


def file_days(ledger: pd.DataFrame) -> dict[str, dict]:
    """Per collector file, the content it was read from and the days its records start on."""
    return {row.file: {"sha256": row.sha256, "days": sorted(json.loads(row.rows_per_day or "{}"))}
            for row in ledger.itertuples()}


def _previous_file_days(context: dg.AssetExecutionContext) -> dict[str, dict]:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    entry = event.asset_materialization.metadata.get("file_days") if event and event.asset_materialization else None
    return entry.value if entry else {}


def build(parts: Partitions) -> list:
    """This module's definitions over the partitions resolved at load."""

    @dg.asset(
        group_name="ingest", tags=stage(INGEST),
        io_manager_key="lake_io_manager",
        check_specs=[dg.AssetCheckSpec("collector_files_reconcile", asset="collector_files",
                                       description="Per collector file: decoded + rejected = the collector's own "
                                                   "record count (nfdump -I; the IPFIX file's data records).")],
        metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c) for c in LEDGER_COLUMNS])},
    )
    def collector_files(context: dg.AssetExecutionContext, archives: ArchiveStore, reports: ReportFiles):
        """The collector files of the landing zone (nfcapd, IPFIX) and their ledger, each read once per content hash."""
        store = CollectorStore(archives.base_url)
        found = store.find()
        with ThreadPoolExecutor(max_workers=_STAGING_WORKERS, thread_name_prefix="collector") as pool:
            staged = list(pool.map(lambda f: store.stage(f, context.log), found))
        ledger = ledger_table([(f.name, s) for f, s in zip(found, staged)])
        store.collect_garbage(set(ledger["staged_key"]))
        now = file_days(ledger)
        # A new, changed or removed file changes the days it held and holds: `iot-assets run` rebuilds them.
        rebuild = changed_days(_previous_file_days(context), now) & set(parts.daily.get_partition_keys())
        report_path = reports.write_json("collector_reconciliation.json",
                                         {"files": [s.ledger.to_json() for s in staged]})
        yield dg.Output(
            ledger,
            metadata={
                "files": len(ledger),
                "collector_records": int(ledger["collector_records"].fillna(0).sum()),
                "decoded": int(ledger["decoded"].sum()),
                "rejected": int(ledger["rejected"].sum()),
                "failed_files": dg.MetadataValue.json(ledger.loc[ledger["error"].notna(), "file"].tolist()),
                "read_now": dg.MetadataValue.json([f.name for f, s in zip(found, staged) if s.read_now]),
                "changed_days": dg.MetadataValue.json(sorted(rebuild)),
                "file_days": dg.MetadataValue.json(now),
                "reconciliation": dg.MetadataValue.path(str(report_path)),
                "ledger": ledger_ui_table(ledger),
            },
        )
        yield reconcile_check(ledger)

    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="ingest", tags=stage(DAILY_FLOWS),
        io_manager_key="lake_io_manager",
        check_specs=[dg.AssetCheckSpec("collector_flows_match_staging", asset="collector_flows", blocking=True,
                                       description="Each collector file's records of the day = the count its ledger "
                                                   "recorded when it was read.")],
        metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c) for c in COLLECTOR_FLOW_COLUMNS])},
    )
    def collector_flows(context: dg.AssetExecutionContext, collector_files: pd.DataFrame, archives: ArchiveStore,
                        pseudonymiser: dg.ResourceParam[Pseudonymiser]):
        """Biflows that start on the day, stitched from the records of any collector file, with their device identity."""
        store = CollectorStore(archives.base_url)
        differ, totals = {}, {"records": 0, "biflows": 0, "stitched": 0}
        identities: dict[str, int] = {}

        def build(day: str) -> pd.DataFrame:
            flows, read, expected = day_flows(store, collector_files, day)
            flows = _pseudonymised(flows, pseudonymiser, day)
            wrong = {f: (read.get(f, 0), n) for f, n in expected.items() if read.get(f, 0) != n}
            wrong.update({f: (n, 0) for f, n in read.items() if f not in expected})
            if wrong:
                differ[day] = ", ".join(f"{f}: {got:,} records, ledger says {want:,}" for f, (got, want) in wrong.items())
            totals["records"] += sum(read.values())
            totals["biflows"] += flows.num_rows
            totals["stitched"] += int(pc.sum(pc.greater(flows.column("reverse_packets"), 0)).as_py() or 0)
            for item in pc.value_counts(flows.column("identity")).to_pylist():
                identities[item["values"]] = identities.get(item["values"], 0) + item["counts"]
            # Integer columns stay integers where they are null (a pandas int64 cannot hold a null).
            return flows.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int16(): pd.Int16Dtype(),
                                                 pa.int8(): pd.Int8Dtype()}.get)

        built = DaysBuilt(context.partition_keys, build,
                          lambda: {**totals, "identity": dg.MetadataValue.json(identities)})
        yield dg.Output(built)
        built.written()
        yield dg.AssetCheckResult(
            check_name="collector_flows_match_staging", passed=not differ, severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(f"{d}: {w}" for d, w in sorted(differ.items()))[:2000]
            or f"every file's records of the day match its ledger ({totals['records']:,} records, "
               f"{totals['biflows']:,} biflows)",
            metadata={"failed_days": dg.MetadataValue.json(sorted(differ)), **totals},
        )

    return [collector_files, collector_flows]


def _pseudonymised(flows: pa.Table, pseudonymiser: Pseudonymiser, day: str) -> pa.Table:
    """The day's biflows as everything past staging names them: MACs and home addresses pseudonymised
    (the same mapping as the archives'), the device's identity columns too."""
    if pseudonymiser.keys is None:
        return flows
    flows = pseudonymiser.flows(flows)
    identity = flows.column("identity").to_pylist()
    keys = [None if key is None else (pseudonymiser.mac(key, day) if kind == "mac" else pseudonymiser.ip(key, day))
            for key, kind in zip(flows.column("device_key").to_pylist(), identity)]
    ips = [None if ip is None else pseudonymiser.ip(ip, day) for ip in flows.column("device_ip").to_pylist()]
    flows = flows.set_column(flows.schema.get_field_index("device_key"), "device_key", pa.array(keys, pa.string()))
    return flows.set_column(flows.schema.get_field_index("device_ip"), "device_ip", pa.array(ips, pa.string()))


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
