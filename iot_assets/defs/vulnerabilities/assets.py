"""Vulnerabilities: the public feeds an operator drops in feeds/, each device's CVEs ranked by risk, notices per line."""

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from iot_assets.contracts.calendar import previous_day
from iot_assets.contracts.schemas import DeviceVulnerabilities, column_schema
from iot_assets.core import feeds
from iot_assets.core import vulnerabilities as vuln
from iot_assets.core.device_cpes import DEFAULT_DEVICE_CPES, read_device_cpes
from iot_assets.defs.automation.sensors import AFTER_ITS_INPUTS
from iot_assets.defs.day_metadata import table_metadata
from iot_assets.defs.ingest.assets import days_check, schema_failures
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import EVERY_BUILT_DAY, Partitions
from iot_assets.defs.resources import ModelSettings, VulnerabilitySettings
from iot_assets.defs.stages import DAILY_SCORING, INGEST, REPORTS, stage
from iot_assets.io.lake import LazyDays
from iot_assets.io.reports import ReportFiles
from iot_assets.reports.day_tables import vulnerabilities_table

with warnings.catch_warnings():
    # The parameter is beta in Dagster 1.13; the first day has no day before it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1,
                                               allow_nonexistent_upstream_partitions=True)

# A feed table not materialized yet (a deployment upgraded to this group, a first feed refused)
# arrives as None and counts as empty: the daily graph goes on, the feeds' checks say why.
FEED_TABLE = dg.AssetIn(metadata={"allow_missing": True})
FEED_LABELS = {"nvd": "NVD CVE", "kev": "CISA KEV", "epss": "FIRST EPSS"}


class NoFeed:
    """A feed with no file in the folder: empty tables, and a feeds_fresh warning that says so."""

    def __init__(self, feed: str, folder: str, expected: str):
        self.feed, self.message = feed, f"no {FEED_LABELS[feed]} feed file ({expected}) in {folder}"


def _import(feed: str, run) -> feeds.FeedImport:
    """The import, or the run's failure with the FeedError's one line: the last good version stays in the lake."""
    try:
        return run()
    except feeds.FeedError as exc:
        raise dg.Failure(description=f"{FEED_LABELS[feed]} feed refused, the previous version stays in use: {exc}",
                         allow_retries=False) from None


def _feed_metadata(result: feeds.FeedImport | NoFeed, folder: str) -> dict:
    if isinstance(result, NoFeed):
        return {"feed_date": "none", "records": 0, "problems": dg.MetadataValue.json([result.message]),
                "folder": dg.MetadataValue.path(folder)}
    version = result.version
    return {"sha256": version.sha256, "feed_date": version.feed_date, "records": version.records,
            "files": dg.MetadataValue.json(list(version.files)), "folder": dg.MetadataValue.path(folder),
            "problems_count": len(result.problems), "problems": dg.MetadataValue.json(result.problems[:200]),
            "refused": dg.MetadataValue.json(result.refused)}


def _data_version(result: feeds.FeedImport | NoFeed) -> dg.DataVersion:
    return dg.DataVersion("no-feed" if isinstance(result, NoFeed) else result.version.sha256)


def freshness(asset: str, result: feeds.FeedImport | NoFeed, max_age_days: int, today: str) -> dg.AssetCheckResult:
    """feeds_fresh of one feed: it is there, no newer file of it was refused, and it is at most `max_age_days` old."""
    if isinstance(result, NoFeed):
        return dg.AssetCheckResult(check_name="feeds_fresh", asset_key=asset, passed=False,
                                   severity=dg.AssetCheckSeverity.WARN,
                                   description=f"{result.message}: no finding can use it until one is dropped there",
                                   metadata={"max_age_days": max_age_days, "today": today})
    age = feeds.feed_ages([result.version], today).iloc[0]
    stale = int(age["age_days"]) > max_age_days
    notes = []
    if stale:
        notes.append(f"{FEED_LABELS[result.version.feed]} feed of {age['feed_date']} is {age['age_days']} days old "
                     f"on {today} (limit {max_age_days}): drop a newer one in the feeds folder")
    if result.refused:
        notes.append("newer file(s) refused, an older one is in use: " + "; ".join(result.refused))
    return dg.AssetCheckResult(
        check_name="feeds_fresh", asset_key=asset, passed=not notes, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(notes)[:2000] or f"feed of {age['feed_date']}, {age['age_days']} days old on {today}",
        metadata={"feed_date": str(age["feed_date"]), "age_days": int(age["age_days"]), "max_age_days": max_age_days,
                  "today": today})


def _today() -> str:
    # Against the clock, not the partitions: a feed is stale when the world has moved on since it was
    # exported. The days replayed here are 2019's: against them any real feed would be "younger" than
    # the data and the check could never fail; on live data the newest day is today anyway.
    return datetime.now(timezone.utc).date().isoformat()


def lines_on(membership: pd.DataFrame | None, day: str) -> pd.DataFrame | None:
    """device_mac -> `line`, the line(s) the device sits on during `day` (several joined by ', ', synthetic lines)."""
    if membership is None or membership.empty:
        return None
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    since = pd.to_datetime(membership["since"], utc=True)
    on = membership[since.isna() | (since < end)]
    return (on.groupby("device_mac")["line_id"].agg(lambda ids: ", ".join(sorted(set(ids))))
            .rename("line").reset_index())


def day_metadata(findings: pd.DataFrame, day: str) -> dict:
    """One day's materialization metadata: counts and the worklist."""
    counts = vuln.day_summary(findings)
    return {"open": counts["open"], "acknowledged": counts["acknowledged"],
            "resolved": int((findings["status"] == "resolved").sum()), "new_today": counts["new_today"],
            "resolved_today": counts["resolved_today"], "kev_open": counts["kev"], "exposed_open": counts["exposed"],
            "devices_with_findings": counts["devices"],
            "worklist": table_metadata(vulnerabilities_table(findings, day))}


def line_notices(findings: pd.DataFrame) -> dict[str, str]:
    """line -> its notice (Markdown), for every line with an unresolved finding (not `unknown`)."""
    open_rows = findings[findings["status"] != "resolved"]
    per_device_lines = open_rows["line"].str.split(", ")
    lines = sorted({line for ids in per_device_lines for line in ids} - {"unknown"})
    return {line: vuln.line_notice_markdown(open_rows[per_device_lines.map(lambda ids, ln=line: ln in ids)]
                                            .assign(line=line), line)
            for line in lines}


def notice_name(line: str) -> str:
    """A file name for a line id (an ISP's ids may hold any character)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", line)


@dataclass(frozen=True)
class FeedTable:
    """One table a feed gives: its asset, its key in `FeedImport.tables`, its columns."""

    asset: str
    table: str
    columns: list[str]
    description: str


@dataclass(frozen=True)
class FeedSpec:
    """One public feed: its files in the feeds folder, how they are imported, the tables (assets) it gives."""

    feed: str  # nvd, kev or epss (FEED_LABELS)
    expected: str  # the file name or pattern a missing feed's warning names
    files: Callable[[Path], list[Path]]  # the feed's files in the (local copy of the) feeds folder
    load: Callable[[Path, list[Path]], feeds.FeedImport]  # (folder, files) -> import; a FeedError refuses
    tables: tuple[FeedTable, ...]  # the first one carries the feeds_fresh check
    check_description: str
    description: str | None = None  # what the import reads and refuses, when its first table does not say


FEEDS = (
    FeedSpec("nvd", feeds.NVD_GLOB, files=lambda local: sorted(local.glob(feeds.NVD_GLOB)),
             load=lambda local, files: feeds.import_nvd(local),
             tables=(FeedTable("nvd_feed", "cves", feeds.CVE_COLUMNS,
                               "NVD CVE API 2.0 feed files (sha256 checked against each .meta): one row per CVE "
                               "with its CVSS and advisory."),
                     FeedTable("nvd_cpe_matches", "cpe_matches", feeds.CPE_MATCH_COLUMNS,
                               "The NVD feed's CPE match entries: which CPE and version range each CVE affects.")),
             check_description="The NVD feed is there and at most IOT_ASSETS_FEED_MAX_AGE_DAYS old (against today).",
             description="Every nvdcve-2.0-*.json.gz in the feeds folder; a file whose sha256 differs from its "
                         ".meta fails the run."),
    FeedSpec("kev", feeds.KEV_FILE, files=lambda local: [p for p in [local / feeds.KEV_FILE] if p.exists()],
             load=lambda local, files: feeds.import_kev(files[0]),
             tables=(FeedTable("kev_feed", "kev", feeds.KEV_COLUMNS,
                               "CISA's Known Exploited Vulnerabilities (known_exploited_vulnerabilities.json): "
                               "one row per CVE, due date."),),
             check_description="The CISA KEV catalogue is there and at most IOT_ASSETS_FEED_MAX_AGE_DAYS old "
                               "(against today)."),
    FeedSpec("epss", feeds.EPSS_GLOB, files=feeds.epss_files,
             load=lambda local, files: feeds.import_newest_good(files, feeds.import_epss),
             tables=(FeedTable("epss_feed", "epss", feeds.EPSS_COLUMNS,
                               "FIRST EPSS scores (epss_scores-YYYY-MM-DD.csv.gz): the newest good file, newer "
                               "refused ones named."),),
             check_description="The newest EPSS file is good and at most IOT_ASSETS_FEED_MAX_AGE_DAYS old "
                               "(against today)."),
)


def feed_asset(spec: FeedSpec) -> dg.AssetsDefinition:
    """The feed's tables as assets of one run (a feed with no file gives empty tables and a feeds_fresh warning)."""
    checked = spec.tables[0].asset

    @dg.multi_asset(
        name=f"{spec.feed}_feed", group_name="vulnerabilities",
        description=spec.description or spec.tables[0].description,
        outs={table.asset: dg.AssetOut(tags=stage(INGEST), io_manager_key="lake_io_manager",
                                       description=table.description,
                                       metadata={"dagster/column_schema": dg.TableSchema(
                                           columns=[dg.TableColumn(c) for c in table.columns])})
              for table in spec.tables},
        check_specs=[dg.AssetCheckSpec("feeds_fresh", asset=checked, description=spec.check_description)],
    )
    def feed_tables(context: dg.AssetExecutionContext, vulnerability_settings: VulnerabilitySettings):
        folder = vulnerability_settings.feeds_dir
        with vulnerability_settings.local_feeds() as local:
            files = spec.files(Path(local))
            if not files:
                result = NoFeed(spec.feed, folder, spec.expected)
                tables = {table.table: pd.DataFrame(columns=table.columns) for table in spec.tables}
                context.log.warning(result.message)
            else:
                result = _import(spec.feed, lambda: spec.load(Path(local), files))
                tables = result.tables
                for refused in result.refused:
                    context.log.warning(f"{FEED_LABELS[spec.feed]} file refused: {refused}")
        metadata = _feed_metadata(result, folder)
        for table in spec.tables:
            # The first table's records are the feed's (its CVEs); the others count their own rows.
            records = {} if table.asset == checked else {"records": len(tables[table.table])}
            yield dg.Output(tables[table.table], output_name=table.asset, data_version=_data_version(result),
                            metadata={**metadata, **records})
        yield freshness(checked, result, vulnerability_settings.max_age_days, _today())

    return feed_tables


def or_empty(table: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """A feed table, or an empty one with its columns when the feed is not materialized yet."""
    return table if table is not None else pd.DataFrame(columns=columns)


def build(parts: Partitions) -> list:
    """This group's definitions over the partitions resolved at load."""

    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="vulnerabilities", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        ins={
            "device_inventory": dg.AssetIn(metadata={"columns": ["device_mac", "predicted_device"], "keep_days": 0}),
            "device_exposure": dg.AssetIn(metadata={"keep_days": 0}),
            "nvd_feed": FEED_TABLE, "nvd_cpe_matches": FEED_TABLE, "kev_feed": FEED_TABLE, "epss_feed": FEED_TABLE,
            "line_membership": dg.AssetIn(metadata={"allow_missing": True}),
            # In a range of days, the days before the last are built in this same run: allowed missing here,
            # and the history is carried from the run's own days (the day before the range must exist).
            "previous_vulnerabilities": dg.AssetIn(key="device_vulnerabilities", partition_mapping=DAY_BEFORE,
                                                   metadata={"allow_missing_partitions": True}),
        },
        check_specs=[dg.AssetCheckSpec("vulnerabilities_schema", asset="device_vulnerabilities",
                                       description="pandera DeviceVulnerabilities on each day.")],
        metadata={"dagster/column_schema": column_schema(DeviceVulnerabilities)},
    )
    def device_vulnerabilities(context: dg.AssetExecutionContext, device_inventory: LazyDays,
                               device_exposure: LazyDays, nvd_feed: pd.DataFrame | None,
                               nvd_cpe_matches: pd.DataFrame | None, kev_feed: pd.DataFrame | None,
                               epss_feed: pd.DataFrame | None, line_membership: pd.DataFrame | None,
                               previous_vulnerabilities: LazyDays, model_settings: ModelSettings):
        """Per device MAC and CVE of its model's CPE: CVSS, KEV, EPSS, exposure evidence, risk, status since first seen."""
        cves, matches = or_empty(nvd_feed, feeds.CVE_COLUMNS), or_empty(nvd_cpe_matches, feeds.CPE_MATCH_COLUMNS)
        kev, epss = or_empty(kev_feed, feeds.KEV_COLUMNS), or_empty(epss_feed, feeds.EPSS_COLUMNS)
        missing = [name for name, table in (("nvd_feed", nvd_feed), ("kev_feed", kev_feed), ("epss_feed", epss_feed))
                   if table is None]
        if missing:
            context.log.warning(f"{', '.join(missing)} not materialized yet: counted as empty")
        device_cpes = read_device_cpes()
        acknowledgements = model_settings.read_acknowledgements()
        partitions = set(parts.daily.get_partition_keys())
        out, schema_bad = {}, {}
        for day in context.partition_keys:
            before = previous_day(day)
            previous = out.get(before, previous_vulnerabilities.get(before))
            if previous is None and before in partitions:
                raise FileNotFoundError(f"device_vulnerabilities {before} has not been built: the lifecycle carries "
                                        "from the day before, so build the days in order (or the whole range in one run)")
            table = vuln.device_vulnerabilities(day, device_inventory[day], previous, device_cpes, cves, matches, kev,
                                                epss, exposure=device_exposure[day],
                                                acknowledgements=acknowledgements,
                                                lines=lines_on(line_membership, day))
            failures = schema_failures(DeviceVulnerabilities, table)
            if failures is not None:
                schema_bad[day] = "; ".join(f"{r.column} {r.check} ({r.rows} rows)" for r in failures.itertuples())
            out[day] = table
            context.add_asset_metadata(day_metadata(table, day), asset_key="device_vulnerabilities", partition_key=day)
        context.add_asset_metadata({"cves_in_feed": len(cves), "kev_entries": len(kev), "epss_scores": len(epss),
                                    "feeds_missing": dg.MetadataValue.json(missing),
                                    "device_cpes": dg.MetadataValue.path(str(DEFAULT_DEVICE_CPES))},
                                   asset_key="device_vulnerabilities")
        yield dg.Output(out)
        yield days_check("vulnerabilities_schema", "device_vulnerabilities", schema_bad,
                         "every day matches DeviceVulnerabilities", {"days": len(out)})


    @dg.asset(group_name="vulnerabilities", tags=stage(REPORTS), automation_condition=AFTER_ITS_INPUTS,
              ins={"device_vulnerabilities": EVERY_BUILT_DAY})
    def vulnerability_report(context: dg.AssetExecutionContext, device_vulnerabilities: LazyDays,
                             reports: ReportFiles):
        """reports/vulnerabilities.json and a notice per subscriber line (notices/<line>.md, .html), of the newest day."""
        if not len(device_vulnerabilities):
            raise dg.Failure(description="no day of device_vulnerabilities is built yet: build the daily assets first")
        day = list(device_vulnerabilities)[-1]
        findings = device_vulnerabilities[day]
        document = vuln.vulnerabilities_json(findings)
        path = reports.write_json("vulnerabilities.json", document)
        notices = line_notices(findings)
        written = set()
        for line, text in notices.items():
            name = notice_name(line)
            reports.write_text(f"notices/{name}.md", text)
            reports.write_text(f"notices/{name}.html", vuln.notice_html(text, f"Security notice for line {line}"))
            written |= {f"{name}.md", f"{name}.html"}
        # A line whose findings are all resolved gets no notice: the one of an earlier day goes.
        folder = reports.path("notices")
        stale = [p for p in folder.iterdir() if p.name not in written] if folder.exists() else []
        for old in stale:
            old.unlink()
        return dg.MaterializeResult(metadata={
            **reports.metadata(path), "day": day, "devices": len(document),
            "findings": sum(len(d["findings"]) for d in document), "notices": len(notices),
            "notices_removed": dg.MetadataValue.json(sorted(p.name for p in stale)),
            "notices_folder": dg.MetadataValue.path(str(folder))})

    return [*(feed_asset(spec) for spec in FEEDS), device_vulnerabilities, vulnerability_report]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
