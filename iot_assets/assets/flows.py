"""From the landing zone to validated daily flow tables."""


import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from iot_assets import catalogue
from iot_assets.archive import find_archives
from iot_assets.clean import to_device_centric
from iot_assets.decode import DECODED_SCHEMA
from iot_assets.ingest import ArchiveSummary, decode_archive, read_summary
from iot_assets.partitions import daily_partitions
from iot_assets.resources import DataLake, day_bounds
from iot_assets.schemas import CleanFlows, DecodedFlows, FlowRejects, column_schema

MANIFEST_COLUMNS = [
    "archive", "device", "category", "sha256", "size_bytes", "parts", "staged_dir", "local_mac",
    "dominant_mac", "lines", "flow_records", "stats_exported", "decoded", "rejected", "reconciled",
    "first_day", "last_day", "error", "warnings",
]


def stage_archives(lake: DataLake, log=None) -> tuple[list[ArchiveSummary], dict[str, str], list[str]]:
    """Decode every archive of the landing zone not yet decoded at its content hash.

    Returns the summaries, the staged directory per archive, and the archives whose
    content changed since the last staging (their days need rebuilding).
    """
    first_day, last_day = lake.days
    archives, errors = find_archives(lake.raw_dir)
    summaries: list[ArchiveSummary] = [ArchiveSummary(archive=e.archive, error=e.message) for e in errors]
    staged: dict[str, str] = {}
    changed: list[str] = []
    for archive in archives:
        sha = archive.sha256()
        # The date range is part of the key: it decides which records are rejected.
        target = lake.staging_dir / archive.name / f"{sha[:16]}_{first_day}_{last_day}"
        summary = read_summary(target)
        if summary is None:
            if log:
                log.info(f"decoding {archive.name} ({archive.size_bytes:,} bytes, {len(archive.parts)} part(s))")
            summary = decode_archive(archive, target, first_day, last_day, sha256=sha)
            changed.append(archive.name)
            for old in target.parent.iterdir():
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
        summaries.append(summary)
        staged[archive.name] = str(target)
    return summaries, staged, changed


def reconciliation_report(summaries: list[ArchiveSummary]) -> dict:
    return {
        "archives": [
            {
                "archive": s.archive,
                "device": s.device,
                "lines": s.lines,
                "flow_records": s.flow_records,
                "stats_exported": s.stats_exported,
                "decoded": s.decoded,
                "rejected": s.rejected,
                "rejects_by_reason": s.rejects_by_reason,
                "reconciled": s.reconciled,
                "error": s.error,
            }
            for s in summaries
        ]
    }


def reconciliation_check(summaries: list[ArchiveSummary]) -> dg.AssetCheckResult:
    failed = {s.archive: s.error or f"{s.decoded:,} decoded + {s.rejected:,} rejected of {s.flow_records:,} flow lines, "
              f"stats say {s.stats_exported}" for s in summaries if not s.reconciled}
    return dg.AssetCheckResult(
        check_name="archives_reconcile",
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{k}: {v}" for k, v in failed.items()) or "every archive reconciles",
        metadata={
            "archives": len(summaries),
            "failed": dg.MetadataValue.json(failed),
            "flow_records": sum(s.flow_records for s in summaries),
            "decoded": sum(s.decoded for s in summaries),
            "rejected": sum(s.rejected for s in summaries),
        },
    )


def device_check(summaries: list[ArchiveSummary]) -> dg.AssetCheckResult:
    mismatched = {s.archive: w for s in summaries for w in s.warnings if "dominant MAC" in w}
    unknown = [s.archive for s in summaries if s.error is None and s.device is None]
    return dg.AssetCheckResult(
        check_name="archives_match_catalogue",
        passed=not mismatched and not unknown,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            "; ".join([*(f"{k}: {v}" for k, v in mismatched.items()),
                       *(f"{a}: not in the catalogue, its dominant MAC is taken as the device" for a in unknown)])
            or "every archive is a catalogue device and carries its MAC"
        ),
        metadata={"mismatched": dg.MetadataValue.json(mismatched), "not_in_catalogue": dg.MetadataValue.json(unknown)},
    )


@dg.asset(
    group_name="ingest",
    io_manager_key="lake_io_manager",
    check_specs=[
        dg.AssetCheckSpec("archives_reconcile", asset="raw_archives",
                          description="Flow lines = decoded + rejected = the archive's stats.exportedFlowTotalCount."),
        dg.AssetCheckSpec("archives_match_catalogue", asset="raw_archives",
                          description="Each archive is a catalogue device and its dominant MAC is that device's."),
    ],
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c) for c in MANIFEST_COLUMNS])},
)
def raw_archives(context: dg.AssetExecutionContext, lake: DataLake):
    """The landing zone: archives with checksums and devices, each decoded once per content hash."""
    summaries, staged, changed = stage_archives(lake, context.log)
    rows = []
    for s in summaries:
        device = catalogue.BY_ARCHIVE.get(s.archive)
        days = sorted(s.days)
        rows.append({
            "archive": s.archive, "device": s.device, "category": device.category if device else None,
            "sha256": s.sha256, "size_bytes": s.size_bytes, "parts": s.parts, "staged_dir": staged.get(s.archive),
            "local_mac": s.local_mac, "dominant_mac": s.dominant_mac, "lines": s.lines,
            "flow_records": s.flow_records, "stats_exported": s.stats_exported, "decoded": s.decoded,
            "rejected": s.rejected, "reconciled": s.reconciled, "first_day": days[0] if days else None,
            "last_day": days[-1] if days else None, "error": s.error, "warnings": "; ".join(s.warnings) or None,
        })
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    report = reconciliation_report(summaries)
    lake.reports_dir.mkdir(parents=True, exist_ok=True)
    report_path = lake.reports_dir / "reconciliation.json"
    report_path.write_text(json.dumps(report, indent=2))
    changed_days = sorted({d for s in summaries if s.archive in changed for d in s.days})
    yield dg.Output(
        manifest,
        metadata={
            "archives": len(manifest),
            "flow_records": int(manifest["flow_records"].fillna(0).sum()),
            "rejected": int(manifest["rejected"].fillna(0).sum()),
            "decoded_now": dg.MetadataValue.json(changed),
            "changed_days": dg.MetadataValue.json(changed_days),
            "reconciliation": dg.MetadataValue.path(str(report_path)),
            "manifest": dg.MetadataValue.md(manifest.drop(columns=["sha256", "staged_dir"]).to_markdown(index=False)),
        },
    )
    yield reconciliation_check(summaries)
    yield device_check(summaries)


def read_day(manifest: pd.DataFrame, day: str) -> pa_arrow.Table:
    """The decoded flows of `day` from every staged archive, pruned by row-group statistics."""
    start, end = day_bounds(day)
    tables = []
    for row in manifest.itertuples():
        if not row.staged_dir or row.first_day is None or not (row.first_day <= day <= row.last_day):
            continue
        path = Path(row.staged_dir) / "flows.parquet"
        if path.exists():
            tables.append(pq.read_table(path, filters=[("flow_start", ">=", start), ("flow_start", "<", end)],
                                        schema=DECODED_SCHEMA))
    return pa_arrow.concat_tables(tables) if tables else DECODED_SCHEMA.empty_table()


def schema_check(name: str, asset: str, model, df: pd.DataFrame) -> dg.AssetCheckResult:
    try:
        model.validate(df, lazy=True)
        return dg.AssetCheckResult(check_name=name, asset_key=asset, passed=True, metadata={"rows": len(df)})
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        summary = cases.groupby(["column", "check"], dropna=False).size().reset_index(name="rows")
        return dg.AssetCheckResult(
            check_name=name, asset_key=asset, passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description=f"{len(cases)} failures of {model.__name__}",
            metadata={"rows": len(df), "failures": dg.MetadataValue.md(summary.to_markdown(index=False))},
        )


@dg.asset(
    partitions_def=daily_partitions,
    group_name="ingest",
    io_manager_key="lake_io_manager",
    check_specs=[dg.AssetCheckSpec("decoded_schema", asset="decoded_flows",
                                   description="pandera DecodedFlows on the partition.")],
    metadata={"dagster/column_schema": column_schema(DecodedFlows)},
)
def decoded_flows(context: dg.AssetExecutionContext, raw_archives: pd.DataFrame):
    """Every flow record of the day from every archive, typed, with its archive and line number."""
    day = context.partition_key
    table = read_day(raw_archives, day)
    df = table.to_pandas()
    per_archive = df["archive"].value_counts().to_dict()
    yield dg.Output(df, metadata={"rows": len(df), "rows_per_archive": dg.MetadataValue.json(per_archive)})
    yield schema_check("decoded_schema", "decoded_flows", DecodedFlows, df)


def _split_schema_failures(clean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rows that break the CleanFlows contract move to the rejects; a broken column is a bug and raises.

    Returns the valid rows, the rejected rows and the failure cases (empty when all passed).
    """
    try:
        valid = CleanFlows.validate(clean, lazy=True)
        return valid, clean.iloc[0:0][["archive", "line_number"]].assign(reason="", detail=""), pd.DataFrame()
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        row_cases = cases[cases["index"].notna()]
        if len(row_cases) < len(cases):
            raise
        reasons = (
            row_cases.assign(reason="schema:" + row_cases["column"].fillna("row").astype(str) + ":" + row_cases["check"].astype(str))
            .groupby("index")["reason"].first()
        )
        bad = clean.index.isin(reasons.index)
        rejected = clean.loc[bad, ["archive", "line_number"]].assign(
            reason=reasons.reindex(clean.index[bad]).to_numpy(), detail=""
        )
        return CleanFlows.validate(clean.loc[~bad], lazy=True), rejected, cases


@dg.multi_asset(
    partitions_def=daily_partitions,
    group_name="ingest",
    outs={
        "clean_flows": dg.AssetOut(io_manager_key="lake_io_manager", metadata={"dagster/column_schema": column_schema(CleanFlows)},
                                   description="Flows of the day seen from their local device, labelled and validated."),
        "clean_rejects": dg.AssetOut(io_manager_key="lake_io_manager", metadata={"dagster/column_schema": column_schema(FlowRejects)},
                                     description="Decoded flows of the day that failed a cleaning rule, with the reason."),
    },
    check_specs=[
        dg.AssetCheckSpec("day_reconciles", asset="clean_flows",
                          description="Decoded rows of the day = clean rows + rejected rows."),
        dg.AssetCheckSpec("clean_schema", asset="clean_flows", description="pandera CleanFlows on the partition."),
    ],
)
def clean_flows(context: dg.AssetExecutionContext, decoded_flows: pd.DataFrame, raw_archives: pd.DataFrame):
    """Device-centric flows of the day: normalised, labelled with the catalogue device, validated."""
    local_macs = dict(zip(raw_archives["archive"], raw_archives["local_mac"]))
    clean, rejects = to_device_centric(decoded_flows, local_macs)
    clean, schema_rejects, failures = _split_schema_failures(clean)
    rejects = pd.concat([rejects, schema_rejects], ignore_index=True)
    rejects = FlowRejects.validate(rejects)
    by_reason = rejects["reason"].value_counts().to_dict()
    yield dg.Output(clean.reset_index(drop=True), output_name="clean_flows", metadata={
        "rows": len(clean),
        "devices": int(clean["device_mac"].nunique()),
        "rows_per_device": dg.MetadataValue.json(clean["device_name"].fillna(clean["device_mac"]).value_counts().to_dict()),
    })
    yield dg.Output(rejects, output_name="clean_rejects", metadata={"rows": len(rejects), "by_reason": dg.MetadataValue.json(by_reason)})
    balanced = len(decoded_flows) == len(clean) + len(rejects)
    yield dg.AssetCheckResult(
        check_name="day_reconciles", asset_key="clean_flows", passed=balanced,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(decoded_flows):,} decoded = {len(clean):,} clean + {len(rejects):,} rejected"
        if balanced else f"{len(decoded_flows):,} decoded != {len(clean):,} clean + {len(rejects):,} rejected",
        metadata={"decoded": len(decoded_flows), "clean": len(clean), "rejected": len(rejects),
                  "rejects_by_reason": dg.MetadataValue.json(by_reason)},
    )
    summary = failures.groupby(["column", "check"], dropna=False).size().reset_index(name="rows") if len(failures) else None
    yield dg.AssetCheckResult(
        check_name="clean_schema", asset_key="clean_flows", passed=summary is None,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if summary is None else f"{len(schema_rejects)} rows broke CleanFlows and went to clean_rejects",
        metadata={"rows": len(clean), "failures": dg.MetadataValue.md(summary.to_markdown(index=False))
                  if summary is not None else "none"},
    )
