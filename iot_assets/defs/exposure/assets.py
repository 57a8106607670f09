"""Exposure: which devices are vulnerable, why and since when; the security team's daily worklist."""

import warnings

import dagster as dg
import pandas as pd

from iot_assets.contracts.calendar import previous_day
from iot_assets.core import exposure, exposure_incidents, exposure_json, exposure_metrics
from iot_assets.defs.day_metadata import attach, exposure_metadata
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import EVERY_BUILT_DAY, Partitions
from iot_assets.defs.resources import ExposureSettings, ModelSettings
from iot_assets.defs.stages import DAILY_SCORING, REPORTS, stage
from iot_assets.io.lake import LazyDays, concat_days
from iot_assets.io.reports import ReportFiles
from iot_assets.synthetic.inject import EXPOSURE_EPISODE_TYPES

# A device whose Internet flows are mostly on ports the rules and the known-service table
# cannot place gets a WARN: its exposure may be where the rules do not look.
UNEXPLAINED_SHARE_LIMIT = 0.5
MIN_INTERNET_FLOWS = 20  # below this a share says little

with warnings.catch_warnings():
    # The parameter is beta in Dagster 1.13; the first day has no day before it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1,
                                               allow_nonexistent_upstream_partitions=True)


def _coverage_note(coverage: pd.DataFrame) -> pd.DataFrame:
    busy = coverage[coverage["internet_flows"] >= MIN_INTERNET_FLOWS]
    return busy[busy["unexplained_share"] > UNEXPLAINED_SHARE_LIMIT]


def build(parts: Partitions) -> list:
    """This group's definitions over the partitions resolved at load."""

    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="exposure", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        ins={
            "clean_flows": dg.AssetIn(metadata={"columns": exposure.FLOW_COLUMNS + exposure_incidents.TIME_COLUMNS,
                                                "keep_days": 0}),
            "device_inventory": dg.AssetIn(),
            # The day's incidents: a finding whose evidence flows overlap one names it (explained_by_incident).
            "anomaly_incidents": dg.AssetIn(metadata={"allow_missing_partitions": True}),
            # In a range of days, the days before the last are built in this same run: allowed missing here,
            # and the history is carried from the run's own days (the day before the range must exist).
            "previous_exposure": dg.AssetIn(key="device_exposure", partition_mapping=DAY_BEFORE,
                                            metadata={"allow_missing_partitions": True}),
        },
        check_specs=[
            dg.AssetCheckSpec("no_new_high_exposure", asset="device_exposure",
                              description="No device gains a high-severity finding it never had on an earlier day."),
            dg.AssetCheckSpec("exposure_rules_cover_traffic", asset="device_exposure",
                              description=f"No device has more than {UNEXPLAINED_SHARE_LIMIT:.0%} of its Internet flows "
                                          "on ports no exposure rule or known service explains."),
        ],
    )
    def device_exposure(context: dg.AssetExecutionContext, clean_flows: LazyDays,
                        device_inventory: LazyDays, anomaly_incidents: LazyDays, previous_exposure: LazyDays,
                        exposure_settings: ExposureSettings):
        """Per device MAC and kind: exposure findings with evidence and the day each was first seen."""
        advisories, problems = exposure.read_advisories(exposure_settings.advisories_path)
        for problem in problems:
            context.log.warning(f"advisory left out: {problem}")
        partitions = set(parts.daily.get_partition_keys())
        out, new_high, uncovered, baseline_days = {}, [], [], []
        for day in context.partition_keys:
            before = previous_day(day)
            previous = out.get(before, previous_exposure.get(before))
            if previous is None and before in partitions:
                raise FileNotFoundError(f"device_exposure {before} has not been built: first_seen carries from the day "
                                        f"before, so build the days in order (or the whole range in one run)")
            flows, inventory = clean_flows[day], device_inventory[day]
            today = exposure.day_findings(flows, inventory, advisories)
            table = exposure.carry_history(previous, today, day, exposure.device_lines(flows) if len(flows) else {})
            incidents = anomaly_incidents.get(day)
            if incidents is None:
                context.log.warning(f"anomaly_incidents {day} is not built: no finding of the day names an incident")
            table = exposure_incidents.link_incidents(table, flows, incidents)
            out[day] = table
            attach(context, "device_exposure", day, exposure_metadata(table, day, previous))
            if previous is None:
                baseline_days.append(day)  # the first day of history: its findings are the baseline
            else:
                new_high.append(exposure.new_high_findings(table).assign(day=day))
            uncovered.append(_coverage_note(exposure.rules_coverage(flows)).assign(day=day))
        fresh = pd.concat(new_high, ignore_index=True) if new_high else pd.DataFrame(columns=["day", "device_key", "kind"])
        unexplained = pd.concat(uncovered, ignore_index=True)
        # Each day's worklist and counts are on its own partition (`attach`).
        yield dg.Output(out, metadata={
            "days_in_run": len(out),
            "advisories": dg.MetadataValue.path(exposure_settings.advisories_path),
            "advisories_left_out": dg.MetadataValue.json(problems),
        })
        yield dg.AssetCheckResult(
            check_name="no_new_high_exposure", passed=fresh.empty, severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(f"{r.day} {r.device or r.device_key}: {r.kind} ({', '.join(r.evidence[:2])})"
                                  for r in fresh.itertuples())[:2000] or "no new high-severity finding",
            metadata={"new_high": dg.MetadataValue.json(fresh[["day", "device_key", "kind"]].to_dict("records")),
                      "baseline_days": dg.MetadataValue.json(baseline_days)},
        )
        yield dg.AssetCheckResult(
            check_name="exposure_rules_cover_traffic", passed=unexplained.empty, severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{r.day} {r.device or r.device_key}: {r.unexplained_share:.0%} of {r.internet_flows} "
                                  f"flows unexplained ({r.unexplained_ports})" for r in unexplained.itertuples())[:2000]
            or f"every device with {MIN_INTERNET_FLOWS}+ Internet flows is mostly explained",
            metadata={"limit": UNEXPLAINED_SHARE_LIMIT,
                      "max_unexplained_share": float(unexplained["unexplained_share"].max()) if len(unexplained) else 0.0},
        )


    @dg.asset(group_name="exposure", tags=stage(REPORTS), ins={"device_exposure": EVERY_BUILT_DAY})
    def exposure_report(context: dg.AssetExecutionContext, device_exposure: LazyDays,
                        model_settings: ModelSettings, reports: ReportFiles, exposure_settings: ExposureSettings):
        """reports/exposure.json over every built day, and reports/exposure_metrics.json against injected exposure episodes."""
        table = concat_days(device_exposure)
        days = sorted(device_exposure)  # a day without any finding has no rows, but it was evaluated
        report = exposure_json.exposure_json(table, days, exposure.read_advisories(exposure_settings.advisories_path)[0])
        path = reports.write_json("exposure.json", report)
        metadata = {"devices": len(report["devices"]), "lines": len(report["lines"]),
                    "day_range": dg.MetadataValue.json(report["day_range"]), **reports.metadata(path)}
        episodes = model_settings.read_episodes(EXPOSURE_EPISODE_TYPES)
        if episodes is not None and len(episodes):
            metrics = exposure_metrics.exposure_metrics(table, episodes, days=days)
            metadata["metrics"] = dg.MetadataValue.path(str(reports.write_json("exposure_metrics.json", metrics)))
            metadata["recall"] = dg.MetadataValue.json({k: v["recall"] for k, v in metrics["kinds"].items()})
        return dg.MaterializeResult(metadata=metadata)

    return [device_exposure, exposure_report]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
