"""Exposure: which devices are vulnerable, why and since when; the security team's daily worklist."""

import json
import os
import warnings
from pathlib import Path

import dagster as dg
import pandas as pd

from iot_assets import exposure
from iot_assets.inject import EXPOSURE_EPISODE_TYPES, read_episodes
from iot_assets.partitions import daily_partitions
from iot_assets.reports.exposure import worklist_markdown
from iot_assets.resources import DataLake

# A device whose Internet flows are mostly on ports the rules and the known-service table
# cannot place gets a WARN: its exposure may be where the rules do not look.
UNEXPLAINED_SHARE_LIMIT = 0.5
MIN_INTERNET_FLOWS = 20  # below this a share says little

with warnings.catch_warnings():
    # The parameter is beta in Dagster 1.13; the first day has no day before it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1,
                                               allow_nonexistent_upstream_partitions=True)


def advisories_file() -> Path:
    """IOT_ASSETS_ADVISORIES, or the advisories shipped with the package (to move into Settings)."""
    return Path(os.environ.get("IOT_ASSETS_ADVISORIES", "").strip() or exposure.DEFAULT_ADVISORIES)


def _previous_table(previous) -> pd.DataFrame | None:
    """The day before's table, or None when there is no day before (the first partition)."""
    if isinstance(previous, dict):  # IO managers that load a partition range as {key: frame}
        previous = next(iter(previous.values()), None)
    return previous if isinstance(previous, pd.DataFrame) else None


@dg.asset(
    partitions_def=daily_partitions,
    group_name="exposure",
    io_manager_key="lake_io_manager",
    ins={
        "clean_flows": dg.AssetIn(),
        "device_inventory": dg.AssetIn(),
        "previous_exposure": dg.AssetIn(key="device_exposure", partition_mapping=DAY_BEFORE),
    },
    check_specs=[
        dg.AssetCheckSpec("no_new_high_exposure", asset="device_exposure",
                          description="No device gains a high-severity finding it never had on an earlier day."),
        dg.AssetCheckSpec("exposure_rules_cover_traffic", asset="device_exposure",
                          description=f"No device has more than {UNEXPLAINED_SHARE_LIMIT:.0%} of its Internet flows "
                                      "on ports no exposure rule or known service explains."),
    ],
)
def device_exposure(context: dg.AssetExecutionContext, clean_flows: pd.DataFrame, device_inventory: pd.DataFrame,
                    previous_exposure):
    """Per device MAC and kind: exposure findings with evidence and the day each was first seen."""
    day = context.partition_key
    previous = _previous_table(previous_exposure)
    advisories, problems = exposure.read_advisories(advisories_file())
    for problem in problems:
        context.log.warning(f"advisory left out: {problem}")
    today = exposure.day_findings(clean_flows, device_inventory, advisories)
    lines = exposure.device_lines(clean_flows) if len(clean_flows) else {}
    table = exposure.carry_history(previous, today, day, lines)
    work = exposure.worklist(table)
    coverage = exposure.rules_coverage(clean_flows)
    yield dg.Output(table, metadata={
        "findings_today": len(work), "devices_with_findings": int(work["device_mac"].nunique()) if len(work) else 0,
        "new_today": int(work["new_today"].sum()) if len(work) else 0,
        "high_today": int((work["severity"] == "high").sum()) if len(work) else 0,
        "history_rows": len(table) - len(work),
        "worklist": dg.MetadataValue.md(worklist_markdown(work)),
        "advisories": dg.MetadataValue.path(str(advisories_file())),
        "advisories_left_out": dg.MetadataValue.json(problems),
    })

    fresh = exposure.new_high_findings(table)
    first_day = previous is None
    yield dg.AssetCheckResult(
        check_name="no_new_high_exposure", passed=first_day or fresh.empty, severity=dg.AssetCheckSeverity.ERROR,
        description=("first day of history: today's findings are the baseline" if first_day else
                     "; ".join(f"{r.device or r.device_mac}: {r.kind} ({', '.join(r.evidence[:2])})"
                               for r in fresh.itertuples()) or "no new high-severity finding"),
        metadata={"new_high": dg.MetadataValue.json(fresh[["device_mac", "device", "kind"]].to_dict("records")),
                  "history": not first_day},
    )
    busy = coverage[coverage["internet_flows"] >= MIN_INTERNET_FLOWS]
    uncovered = busy[busy["unexplained_share"] > UNEXPLAINED_SHARE_LIMIT]
    yield dg.AssetCheckResult(
        check_name="exposure_rules_cover_traffic", passed=uncovered.empty, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{r.device or r.device_mac}: {r.unexplained_share:.0%} of {r.internet_flows} flows "
                              f"unexplained ({r.unexplained_ports})" for r in uncovered.itertuples())
        or f"every device with {MIN_INTERNET_FLOWS}+ Internet flows is mostly explained",
        metadata={"limit": UNEXPLAINED_SHARE_LIMIT,
                  "max_unexplained_share": float(busy["unexplained_share"].max()) if len(busy) else 0.0,
                  "coverage": dg.MetadataValue.md(coverage.to_markdown(index=False, floatfmt=".2f")
                                                  if len(coverage) else "no Internet flows")},
    )


@dg.asset(group_name="exposure", ins={"device_exposure": dg.AssetIn()})
def exposure_report(context: dg.AssetExecutionContext, device_exposure: pd.DataFrame, lake: DataLake):
    """reports/exposure.json over every day, and reports/exposure_metrics.json against injected exposure episodes."""
    table = pd.concat(device_exposure.values(), ignore_index=True) if isinstance(device_exposure, dict) \
        else device_exposure
    # A day without any finding has no rows: the materialized partitions say which days were evaluated.
    days = sorted(context.instance.get_materialized_partitions(dg.AssetKey("device_exposure")))
    report = exposure.exposure_json(table, days)
    lake.reports_dir.mkdir(parents=True, exist_ok=True)
    (lake.reports_dir / "exposure.json").write_text(json.dumps(report, indent=2))
    metadata = {"devices": len(report["devices"]), "lines": len(report["lines"]),
                "day_range": dg.MetadataValue.json(report["day_range"]),
                "report": dg.MetadataValue.path(str(lake.reports_dir / "exposure.json"))}
    if lake.episodes:
        episodes = read_episodes(Path(lake.episodes), EXPOSURE_EPISODE_TYPES)
        if len(episodes):
            metrics = exposure.exposure_metrics(table, episodes, days=days)
            (lake.reports_dir / "exposure_metrics.json").write_text(json.dumps(metrics, indent=2))
            metadata["metrics"] = dg.MetadataValue.path(str(lake.reports_dir / "exposure_metrics.json"))
            metadata["recall"] = dg.MetadataValue.json({k: v["recall"] for k, v in metrics["kinds"].items()})
    return dg.MaterializeResult(metadata=metadata)
