"""From the landing zone to validated daily flow tables."""


import json

import dagster as dg
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from iot_assets.contracts import catalogue
from iot_assets.contracts.flows import DECODED_SCHEMA
from iot_assets.contracts.schemas import (
    CleanFlows,
    DecodedFlows,
    FlowRejects,
    column_schema,
)
from iot_assets.core.clean import COLLECTOR_COLUMNS, DECODED_COLUMNS, to_device_centric
from iot_assets.core.duplicates import archive_overlaps, archive_rank, cross_archive_duplicates
from iot_assets.core.ingest import ArchiveSummary
from iot_assets.core.pseudonymiser import Pseudonymiser
from iot_assets.core.reject_share import first_reject, reject_share_problem
from iot_assets.defs.automation.sensors import LANDING_ZONE_FINGERPRINT, landing_zone_fingerprint
from iot_assets.defs.day_metadata import attach
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import Partitions
from iot_assets.defs.stages import DAILY_FLOWS, INGEST, stage
from iot_assets.io.lake import DaysBuilt, LazyDays, prune_outside
from iot_assets.io.reports import ReportFiles
from iot_assets.io.staging import ArchiveStore

MANIFEST_COLUMNS = [
    "archive", "device", "category", "sha256", "size_bytes", "parts", "staged_key", "local_mac",
    "dominant_mac", "lines", "flow_records", "stats_exported", "decoded", "rejected", "reconciled",
    "first_day", "last_day", "rows_per_day", "error", "warnings", "local_macs",
]
BASELINE_FLOWS_PER_DEVICE_DAY = 400


def stage_archives(archives: ArchiveStore, log=None) -> tuple[list[ArchiveSummary], dict[str, str], list[str], dict[str, str]]:
    """Stage every archive of the landing zone; one that fails is recorded, the others go on.

    Returns the summaries, the staged key per archive that lands, the archives decoded now (new or
    changed) and the archives rejected wholesale (`reject_share_problem`) with the reason: those stay
    staged, for a look at their rejects, but do not land.
    """
    found, errors = archives.find()
    summaries = [ArchiveSummary(archive=e.archive, error=e.message) for e in errors]
    staged: dict[str, str] = {}
    changed: list[str] = []
    rejected_wholesale: dict[str, str] = {}
    for archive in found:
        try:
            summary, key, decoded_now = archives.stage(archive, log)
        except Exception as exc:  # noqa: BLE001 - an archive that cannot be staged must not cost the others
            summaries.append(ArchiveSummary(archive=archive.name, error=f"staging failed: {type(exc).__name__}: {exc}"))
            continue
        summaries.append(summary)
        staged[archive.name] = key
        if decoded_now:
            changed.append(archive.name)
        if summary.rejected:
            with (archives.staging / key / "rejects.parquet").open("rb") as rejects:
                problem = reject_share_problem(summary, archives.max_reject_share, first_reject(rejects))
            if problem:
                rejected_wholesale[archive.name] = problem
    archives.collect_garbage(set(staged.values()))
    for name in rejected_wholesale:
        del staged[name]
    return summaries, staged, changed, rejected_wholesale


def manifest_of(summaries: list[ArchiveSummary], staged: dict[str, str], failed: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per archive; `failed` (archive: why) marks archives that are staged but do not land."""
    failed = failed or {}
    rows = []
    for s in summaries:
        device = catalogue.BY_ARCHIVE.get(s.archive)
        days = sorted(s.days)
        rows.append({
            "archive": s.archive, "device": s.device, "category": device.category if device else None,
            "sha256": s.sha256, "size_bytes": s.size_bytes, "parts": s.parts, "staged_key": staged.get(s.archive),
            "local_mac": s.local_mac, "dominant_mac": s.dominant_mac, "lines": s.lines,
            "flow_records": s.flow_records, "stats_exported": s.stats_exported, "decoded": s.decoded,
            "rejected": s.rejected, "reconciled": s.reconciled, "first_day": days[0] if days else None,
            "last_day": days[-1] if days else None, "rows_per_day": json.dumps(s.days),
            "error": s.error or failed.get(s.archive), "warnings": "; ".join(s.warnings) or None,
            "local_macs": json.dumps(s.local_macs) if s.local_macs else None,
        })
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def reconciliation_report(summaries: list[ArchiveSummary], overlaps: list[dict] | None = None) -> dict:
    """Each archive's ledger, and the flows archives share (counted once: `duplicate_of:<kept>` in clean_rejects)."""
    keys = ("archive", "device", "lines", "flow_records", "stats_exported", "decoded", "rejected", "unreadable",
            "damaged_at_line", "rejects_by_reason", "error")
    return {"archives": [{**{k: getattr(s, k, None) for k in keys}, "reconciled": s.reconciled} for s in summaries],
            "overlaps": overlaps or []}


def flow_keys(archives: ArchiveStore, staged_key: str, local_mac: str | None) -> pd.DataFrame:
    """An archive's staged flows as FLOW_KEY (seen from `local_mac`, as cleaning sees them) and their day."""
    from iot_assets.io.lake import read_parquet

    table = read_parquet(archives.staging / staged_key / "flows.parquet",
                         columns=["src_mac", "src_ip", "dst_ip", "src_port", "dst_port", "protocol", "flow_start"])
    flows = table.to_pandas()
    out = flows["src_mac"] == local_mac if local_mac else pd.Series(True, index=flows.index)
    return pd.DataFrame({
        "device_mac": local_mac, "protocol": flows["protocol"],
        "device_ip": flows["src_ip"].where(out, flows["dst_ip"]), "device_port": flows["src_port"].where(out, flows["dst_port"]),
        "remote_ip": flows["dst_ip"].where(out, flows["src_ip"]), "remote_port": flows["dst_port"].where(out, flows["src_port"]),
        "flow_start": flows["flow_start"], "day": flows["flow_start"].dt.strftime("%Y-%m-%d"),
    })


def overlaps_of(manifest: pd.DataFrame, archives: ArchiveStore) -> list[dict]:
    """Flows that archives of one device share (`archive_overlaps`), over the archives that land."""
    landing = manifest[manifest["staged_key"].notna()]
    local_macs = dict(zip(landing["archive"], landing["local_mac"]))
    keys = dict(zip(landing["archive"], landing["staged_key"]))
    days = {row.archive: set(json.loads(row.rows_per_day or "{}")) for row in landing.itertuples()}
    return archive_overlaps(lambda a: flow_keys(archives, keys[a], local_macs[a]), local_macs,
                            archive_rank(list(local_macs), local_macs), days)


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


def reject_share_check(rejected_wholesale: dict[str, str], max_share: float) -> dg.AssetCheckResult:
    """ERROR when an archive was rejected wholesale: it does not land, and `iot-assets run` exits 1 with an ALERT."""
    return dg.AssetCheckResult(
        check_name="archives_decode",
        passed=not rejected_wholesale,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{k}: {v}" for k, v in rejected_wholesale.items())
        or f"no archive rejects every record or more than {max_share:g} of them",
        metadata={"failed": dg.MetadataValue.json(rejected_wholesale), "max_reject_share": max_share},
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


def archive_days(manifest: pd.DataFrame) -> dict[str, dict]:
    """Per archive, the content it was staged from and the days it covers."""
    return {row.archive: {"sha256": row.sha256, "days": sorted(json.loads(row.rows_per_day or "{}"))}
            for row in manifest.itertuples()}


def changed_days(before: dict[str, dict], after: dict[str, dict]) -> set[str]:
    """Days to rebuild: every day an archive that is new, changed or gone covered, before or after."""
    days: set[str] = set()
    for archive in set(before) | set(after):
        old, new = before.get(archive), after.get(archive)
        if old is None or new is None or old["sha256"] != new["sha256"]:
            days |= set((old or {}).get("days", [])) | set((new or {}).get("days", []))
    return days


def _previous_archive_days(context: dg.AssetExecutionContext) -> dict[str, dict]:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    entry = event.asset_materialization.metadata.get("archive_days") if event and event.asset_materialization else None
    return entry.value if entry else {}


def local_macs_of_day(manifest: pd.DataFrame, pseudonymiser: Pseudonymiser, day: str) -> dict[str, str]:
    """Each archive's device MAC as the flows of `day` name it (its pseudonym of the day's key period)."""
    period = pseudonymiser.period(day)
    out = {}
    for row in manifest.itertuples():
        by_period = json.loads(row.local_macs) if isinstance(getattr(row, "local_macs", None), str) else {}
        out[row.archive] = by_period.get(period, row.local_mac)
    return out


def read_day(manifest: pd.DataFrame, archives: ArchiveStore, day: str) -> tuple[pa_arrow.Table, dict[str, int]]:
    """The decoded flows of `day` from every staged archive, and the rows each archive's summary expects."""
    tables, expected = [], {}
    for row in manifest.itertuples():
        per_day = json.loads(row.rows_per_day) if row.rows_per_day else {}
        if row.staged_key and per_day.get(day):
            tables.append(archives.read_day(row.staged_key, day))
            expected[row.archive] = per_day[day]
    return (pa_arrow.concat_tables(tables) if tables else DECODED_SCHEMA.empty_table()), expected


def schema_failures(model, df: pd.DataFrame) -> pd.DataFrame | None:
    try:
        model.validate(df, lazy=True)
        return None
    except pa.errors.SchemaErrors as exc:
        return exc.failure_cases.groupby(["column", "check"], dropna=False).size().reset_index(name="rows")


def days_check(name: str, asset: str, failures: dict[str, str], passed_note: str, blocking_metadata: dict) -> dg.AssetCheckResult:
    """One result for the days of a run: it fails when any day fails, naming the days."""
    return dg.AssetCheckResult(
        check_name=name, asset_key=asset, passed=not failures, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{day}: {why}" for day, why in sorted(failures.items()))[:2000] or passed_note,
        metadata={"failed_days": dg.MetadataValue.json(sorted(failures)), **blocking_metadata},
    )


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


def _count_once(clean: pd.DataFrame, rank: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A flow that several archives hold kept once (`cross_archive_duplicates`): (the clean rows,
    `duplicate_of:<kept archive>` rejects of the copies, copies per (archive, kept archive))."""
    duplicate_of = cross_archive_duplicates(clean, rank)
    copies = duplicate_of.notna()
    if not copies.any():
        return clean, clean.iloc[0:0][["archive", "line_number"]].assign(reason="", detail=""), {}
    kept = duplicate_of[copies]
    rejects = clean.loc[copies, ["archive", "line_number"]].assign(
        reason=[f"duplicate_of:{archive}" for archive, _ in kept],
        detail=[f"the same flow as {archive} line {line}" for archive, line in kept])
    counted = rejects.assign(kept=[a for a, _ in kept]).groupby(["archive", "kept"]).size()
    return clean.loc[~copies].reset_index(drop=True), rejects, {pair: int(n) for pair, n in counted.items()}


def flow_sample(clean: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Up to a few hundred flows per device of a day: what the per-flow baseline classifier trains on."""
    return clean.sample(frac=1.0, random_state=seed).groupby("device_key").head(BASELINE_FLOWS_PER_DEVICE_DAY) \
        .reset_index(drop=True)


def build(parts: Partitions) -> list:
    """This group's definitions over the partitions resolved at load."""

    @dg.asset(
        group_name="ingest", tags=stage(INGEST),
        io_manager_key="lake_io_manager",
        check_specs=[
            dg.AssetCheckSpec("archives_reconcile", asset="raw_archives",
                              description="Flow lines = decoded + rejected = the archive's stats.exportedFlowTotalCount."),
            dg.AssetCheckSpec("archives_decode", asset="raw_archives",
                              description="No archive rejects every record, or more than IOT_ASSETS_MAX_REJECT_SHARE "
                                          "of them (a changed format): such an archive does not land."),
            dg.AssetCheckSpec("archives_match_catalogue", asset="raw_archives",
                              description="Each archive is a catalogue device and its dominant MAC is that device's."),
        ],
        metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c) for c in MANIFEST_COLUMNS])},
    )
    def raw_archives(context: dg.AssetExecutionContext, archives: ArchiveStore, reports: ReportFiles):
        """The landing zone: archives with checksums and devices, each decoded once per content hash."""
        # What this ingest saw, before it reads: archive_sensor launches no ingest for a landing zone still so.
        fingerprint = landing_zone_fingerprint(archives)
        summaries, staged, changed, rejected_wholesale = stage_archives(archives, context.log)
        manifest = manifest_of(summaries, staged, rejected_wholesale)
        overlaps = overlaps_of(manifest, archives)
        report_path = reports.write_json("reconciliation.json", reconciliation_report(summaries, overlaps))
        now = archive_days(manifest)
        in_range = set(parts.daily.get_partition_keys())
        # A new, changed or removed archive changes the days it covered and covers: all are rebuilt
        # (a day no archive covers any more becomes an empty day, not a stale one).
        rebuild = changed_days(_previous_archive_days(context), now)
        pruned = prune_outside(archives.base_url, in_range)
        if stale_reports := reports.prune_daily_outside(in_range):
            pruned["daily_report"] = stale_reports
        yield dg.Output(
            manifest,
            metadata={
                "archives": len(manifest),
                LANDING_ZONE_FINGERPRINT: fingerprint,
                "flow_records": int(manifest["flow_records"].fillna(0).sum()),
                "rejected": int(manifest["rejected"].fillna(0).sum()),
                "failed_archives": dg.MetadataValue.json(manifest.loc[manifest["error"].notna(), "archive"].tolist()),
                "decoded_now": dg.MetadataValue.json(changed),
                "changed_days": dg.MetadataValue.json(sorted(rebuild & in_range)),
                "archive_days": dg.MetadataValue.json(now),
                "pruned_outside_range": dg.MetadataValue.json(pruned),
                "overlapping_archives": dg.MetadataValue.json(overlaps),
                "reconciliation": dg.MetadataValue.path(str(report_path)),
                "reconciliation_url": dg.MetadataValue.url(reports.url(report_path)),
                "manifest": dg.MetadataValue.md(manifest.drop(columns=["sha256", "staged_key", "rows_per_day"])
                                                .to_markdown(index=False)),
            },
        )
        yield reconciliation_check(summaries)
        yield reject_share_check(rejected_wholesale, archives.max_reject_share)
        yield device_check(summaries)


    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="ingest", tags=stage(DAILY_FLOWS),
        io_manager_key="lake_io_manager",
        check_specs=[
            dg.AssetCheckSpec("decoded_schema", asset="decoded_flows", blocking=True,
                              description="pandera DecodedFlows on each day."),
            dg.AssetCheckSpec("decoded_matches_staging", asset="decoded_flows", blocking=True,
                              description="Each archive's rows of the day = the count its summary recorded when decoded."),
        ],
        metadata={"dagster/column_schema": column_schema(DecodedFlows)},
    )
    def decoded_flows(context: dg.AssetExecutionContext, raw_archives: pd.DataFrame, archives: ArchiveStore):
        """Every flow record of the day from every archive, typed, with its archive and line number."""
        schema_bad, count_bad, rows = {}, {}, []

        def build(day: str) -> pd.DataFrame:  # each day as the lake writes it: a ranged run holds one day
            table, expected = read_day(raw_archives, archives, day)
            df = table.to_pandas()
            del table
            actual = df["archive"].value_counts().to_dict()
            differ = {a: (actual.get(a, 0), n) for a, n in expected.items() if actual.get(a, 0) != n}
            differ.update({a: (n, 0) for a, n in actual.items() if a not in expected})
            if differ:
                count_bad[day] = ", ".join(f"{a}: {got:,} rows, summary says {want:,}" for a, (got, want) in differ.items())
            failures = schema_failures(DecodedFlows, df)
            if failures is not None:
                schema_bad[day] = f"{int(failures['rows'].sum())} failures"
            rows.append(len(df))
            attach(context, "decoded_flows", day, {"rows": len(df), "archives": len(actual)})
            return df

        days = context.partition_keys
        built = DaysBuilt(days, build, lambda: {"rows": sum(rows)})
        yield dg.Output(built)
        built.written()  # schema_bad, count_bad and rows are filled as the days are written
        yield days_check("decoded_schema", "decoded_flows", schema_bad, "every day matches DecodedFlows", {"rows": sum(rows)})
        yield days_check("decoded_matches_staging", "decoded_flows", count_bad,
                         "every archive's rows match its summary", {"days": len(days)})


    @dg.multi_asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="ingest",
        outs={
            "clean_flows": dg.AssetOut(tags=stage(DAILY_FLOWS), io_manager_key="lake_io_manager",
                                       metadata={"dagster/column_schema": column_schema(CleanFlows)},
                                       description="Flows of the day seen from their local device, labelled and validated."),
            "clean_rejects": dg.AssetOut(tags=stage(DAILY_FLOWS), io_manager_key="lake_io_manager",
                                         metadata={"dagster/column_schema": column_schema(FlowRejects)},
                                         description="Decoded flows of the day that failed a cleaning rule, with the reason."),
            "flow_sample": dg.AssetOut(tags=stage(DAILY_FLOWS), io_manager_key="lake_io_manager",
                                       description="Up to 400 clean flows per device and day, for the per-flow baseline."),
        },
        # Each day read once, and only the columns cleaning reads.
        ins={"decoded_flows": dg.AssetIn(metadata={"columns": DECODED_COLUMNS, "keep_days": 0}),
             # The collector files' biflows of the day (defs/ingest/collectors.py), when they were built.
             "collector_flows": dg.AssetIn(metadata={"columns": DECODED_COLUMNS + COLLECTOR_COLUMNS, "keep_days": 0,
                                                     "allow_missing_partitions": True})},
        check_specs=[
            dg.AssetCheckSpec("day_reconciles", asset="clean_flows", blocking=True,
                              description="Decoded rows of the day = clean rows + rejected rows."),
            dg.AssetCheckSpec("clean_schema", asset="clean_flows", description="pandera CleanFlows on the partition."),
            dg.AssetCheckSpec("flows_counted_once", asset="clean_flows",
                              description="No flow (device, protocol, addresses, ports, start) is in two archives; "
                                          "one that is (a re-export, a renamed copy) is kept once, the copies are "
                                          "duplicate_of:<archive> rejects."),
        ],
    )
    def clean_flows(context: dg.AssetExecutionContext, decoded_flows: LazyDays, raw_archives: pd.DataFrame,
                    collector_flows: LazyDays, pseudonymiser: dg.ResourceParam[Pseudonymiser]):
        """Device-centric flows of the day: normalised, labelled with the catalogue device, validated."""
        local_macs = dict(zip(raw_archives["archive"], raw_archives["local_mac"]))
        rank = archive_rank(list(local_macs), local_macs)
        overlaps_by_day: dict[str, dict[tuple[str, str], int]] = {}
        rejects_by_day, samples, rows_by_day, devices_by_day = {}, {}, {}, {}
        unbalanced, schema_notes, by_reason, decoded_rows = {}, {}, {}, 0
        for day in context.partition_keys:
            if day not in decoded_flows:
                raise FileNotFoundError(f"decoded_flows {day} is missing: materialize it first")

        def build(day: str) -> pd.DataFrame:
            """The day's clean flows, as the lake writes them (a ranged run holds one day's); its rejects and sample are kept."""
            nonlocal decoded_rows
            decoded = decoded_flows[day]
            collected = collector_flows.get(day)
            if collected is not None and len(collected):
                decoded = pd.concat([decoded, collected], ignore_index=True)
            decoded_day = len(decoded)
            decoded_rows += decoded_day
            clean, rejects = to_device_centric(decoded, local_macs_of_day(raw_archives, pseudonymiser, day),
                                               pseudonymiser.catalogue(day))
            del decoded
            clean, schema_rejects, failures = _split_schema_failures(clean)
            clean, duplicate_rejects, overlaps_by_day[day] = _count_once(clean, rank)
            rejects = FlowRejects.validate(pd.concat([rejects, schema_rejects, duplicate_rejects], ignore_index=True))
            clean = clean.reset_index(drop=True)
            if decoded_day != len(clean) + len(rejects):
                unbalanced[day] = f"{decoded_day:,} decoded != {len(clean):,} clean + {len(rejects):,} rejected"
            if len(failures):
                schema_notes[day] = f"{len(schema_rejects)} rows broke CleanFlows and went to clean_rejects"
            for reason, n in rejects["reason"].value_counts().items():
                by_reason[reason] = by_reason.get(reason, 0) + int(n)
            rejects_by_day[day], samples[day], rows_by_day[day] = rejects, flow_sample(clean, seed=0), len(clean)
            devices_by_day[day] = clean["device_name"].fillna(clean["device_key"]).value_counts()
            attach(context, "clean_flows", day, {
                "rows": len(clean), "devices": len(devices_by_day[day]),
                "rows_per_device": dg.MetadataValue.json({k: int(v) for k, v in devices_by_day[day].items()})})
            attach(context, "clean_rejects", day, {"rows": len(rejects), "by_reason": dg.MetadataValue.json(
                {reason: int(n) for reason, n in rejects["reason"].value_counts().items()})})
            attach(context, "flow_sample", day, {"rows": len(samples[day])})
            return clean

        def clean_metadata() -> dict:
            # Rows per device of the run: the days' counts summed, in the order value_counts of all rows gives.
            counts = pd.concat(devices_by_day.values()).groupby(level=0, sort=False).sum() if devices_by_day else pd.Series()
            counts = counts.sort_values(ascending=False, kind="stable")
            return {"rows": sum(rows_by_day.values()), "devices": len(counts),
                    "rows_per_device": dg.MetadataValue.json({k: int(v) for k, v in counts.items()})}

        built = DaysBuilt(context.partition_keys, build, clean_metadata)
        yield dg.Output(built, output_name="clean_flows")
        built.written()  # what build gathered (rejects, samples, counts) is complete only now
        rows = sum(rows_by_day.values())
        rejected = sum(len(r) for r in rejects_by_day.values())
        yield dg.Output(rejects_by_day, output_name="clean_rejects",
                        metadata={"rows": rejected, "by_reason": dg.MetadataValue.json(by_reason)})
        yield dg.Output(samples, output_name="flow_sample", metadata={"rows": sum(len(s) for s in samples.values())})
        yield dg.AssetCheckResult(
            check_name="day_reconciles", asset_key="clean_flows", passed=not unbalanced,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(f"{d}: {w}" for d, w in sorted(unbalanced.items()))
            or f"decoded = clean + rejected on every day ({rows:,} + {rejected:,})",
            metadata={"clean": rows, "rejected": rejected, "failed_days": dg.MetadataValue.json(sorted(unbalanced)),
                      "rejects_by_reason": dg.MetadataValue.json(by_reason), "decoded_in_run": decoded_rows},
        )
        overlapping = {day: found for day, found in overlaps_by_day.items() if found}
        yield dg.AssetCheckResult(
            check_name="flows_counted_once", asset_key="clean_flows", passed=not overlapping,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{day}: " + ", ".join(f"{n:,} records of {dropped} are {kept}'s, counted once"
                                                         for (dropped, kept), n in sorted(found.items()))
                                  for day, found in sorted(overlapping.items()))[:2000]
            or "no flow is in two archives",
            metadata={"overlaps": dg.MetadataValue.json({day: {f"{d} -> {k}": n for (d, k), n in found.items()}
                                                         for day, found in overlapping.items()})},
        )
        yield dg.AssetCheckResult(
            check_name="clean_schema", asset_key="clean_flows", passed=not schema_notes,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{d}: {w}" for d, w in sorted(schema_notes.items())) or "every row matches CleanFlows",
            metadata={"rows": rows},
        )

    return [raw_archives, decoded_flows, clean_flows]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
