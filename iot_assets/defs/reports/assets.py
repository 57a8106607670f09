"""Reports people read: one HTML page per day, and one for the models."""


import warnings

import dagster as dg

from iot_assets.contracts.calendar import previous_day
from iot_assets.core import exposure
from iot_assets.core.anomaly import AnomalyDetector
from iot_assets.core.classifier import DeviceClassifier
from iot_assets.defs.automation.sensors import AFTER_ITS_INPUTS
from iot_assets.defs.day_metadata import attach
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import EVERY_BUILT_DAY, Partitions
from iot_assets.defs.resources import ExposureSettings, ModelSettings
from iot_assets.defs.stages import DAILY_SCORING, REPORTS, stage
from iot_assets.io.lake import LazyDays, concat_days
from iot_assets.io.model_labels import model_labels
from iot_assets.io.models import JsonDocument, ServedModels
from iot_assets.io.reports import ReportFiles
from iot_assets.reports.day_tables import exposure_table
from iot_assets.reports.exposure import exposure_section_html, fleet_view_html
from iot_assets.reports.lines import metrics_fragment_html
from iot_assets.reports.pages import daily_page, model_page
from iot_assets.reports.vulnerabilities import vulnerability_section_html

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # the parameter is beta in Dagster 1.13
    TWO_WEEKS = dg.TimeWindowPartitionMapping(start_offset=-13, allow_nonexistent_upstream_partitions=True)


def _versions_of(*frames) -> list[str]:
    return sorted({str(v) for f in frames if "model_version" in f for v in f["model_version"].dropna().unique()})


def _named_devices(lines, findings):
    """The lines' devices by name (and MAC), not by MAC alone."""
    if lines.empty:
        return lines
    names = findings.drop_duplicates("device_key").set_index("device_key")["device"].to_dict()
    return lines.assign(devices=[[f"{names[m]} ({m})" if isinstance(names.get(m), str) else m for m in macs]
                                 for macs in lines["devices"]])


def _advisories_of(findings, advisories) -> list[dict]:
    """The advisories behind the day's `known_advisory` findings, each with its device."""
    seen = findings[findings["seen_today"].astype(bool) & (findings["kind"] == "known_advisory")] if len(findings) \
        else findings
    return [{"device": r.device if isinstance(r.device, str) else r.device_key, **details}
            for r in seen.itertuples() for details in exposure.advisory_details(list(r.evidence), advisories)]


def build(parts: Partitions) -> list:
    """This group's definitions over the partitions resolved at load."""

    @dg.asset(partitions_def=parts.daily, backfill_policy=parts.ranged_backfill, group_name="reports",
              tags=stage(DAILY_SCORING),
              ins={"device_exposure": dg.AssetIn(partition_mapping=TWO_WEEKS, metadata={"allow_missing_partitions": True}),
                   "device_vulnerabilities": dg.AssetIn(metadata={"allow_missing_partitions": True})})
    def daily_report(context: dg.AssetExecutionContext, reports: ReportFiles, device_inventory: LazyDays,
                     anomaly_scores: LazyDays, anomaly_incidents: LazyDays, feature_drift: LazyDays,
                     device_windows: LazyDays, device_exposure: LazyDays, device_vulnerabilities: LazyDays,
                     exposure_settings: ExposureSettings, served_models: ServedModels):
        """The day in one HTML page: what needs attention, incidents, exposure, vulnerabilities, drift, inventory, anomalies, traffic."""
        paths, anomalies = [], 0
        exposures = dict(device_exposure.items())  # two weeks before the run and its days, read once
        advisories, _ = exposure.read_advisories(exposure_settings.advisories_path)
        for day in context.partition_keys:
            scores = anomaly_scores[day]
            findings = exposures[day]
            inventory, incidents, drifts = device_inventory[day], anomaly_incidents[day], feature_drift[day]
            recent = concat_days({d: f for d, f in exposures.items() if d <= day})
            section = exposure_section_html(exposure.worklist(findings), exposure.findings_per_day(recent),
                                            _named_devices(exposure.line_scores(findings[findings["seen_today"].astype(bool)]),
                                                           findings))
            labels = model_labels(served_models.base_url, {
                "device_classifier": _versions_of(inventory), "anomaly_detector": _versions_of(scores, incidents),
                "drift_reference": _versions_of(drifts)})
            html = daily_page(day, inventory, scores, incidents, drifts, device_windows[day], [vulnerability_section_html(device_vulnerabilities.get(day))],
                              exposure_section=section,
                              exposure_changes=exposure_table(findings, day, exposures.get(previous_day(day))).frame(),
                              model_labels=labels, advisories=_advisories_of(findings, advisories))
            paths.append(reports.write_text(f"daily/{day}.html", html))
            flagged = int(scores["anomaly"].astype(bool).sum()) if len(scores) else 0
            anomalies += flagged
            # Each day links its own report (a ranged run would otherwise give every day the last one's).
            attach(context, "daily_report", day, {**reports.metadata(paths[-1]), "anomalies": flagged,
                                                  "incidents": len(anomaly_incidents[day])})
        return dg.MaterializeResult(metadata={"days_in_run": len(paths), "anomalies_in_run": anomalies})


    @dg.asset(
        group_name="reports", tags=stage(REPORTS),
        automation_condition=AFTER_ITS_INPUTS,
        ins={"anomaly_scores": EVERY_BUILT_DAY, "feature_drift": EVERY_BUILT_DAY, "device_exposure": EVERY_BUILT_DAY,
             "device_inventory": EVERY_BUILT_DAY},
    )
    def model_report(context: dg.AssetExecutionContext, reports: ReportFiles, model_settings: ModelSettings,
                     device_classifier: DeviceClassifier, anomaly_detector: AnomalyDetector, drift_reference: JsonDocument,
                     anomaly_scores: LazyDays, feature_drift: LazyDays,
                     device_exposure: LazyDays, device_inventory: LazyDays, line_metrics: JsonDocument):
        """The models in one HTML page: exploration, confusion matrix, scores, importance, ROC curves, drift, the fleet's exposure."""
        versions = {"device_classifier": device_classifier.version, "anomaly_detector": anomaly_detector.version,
                    "drift_reference": drift_reference.version}
        drifts = concat_days(feature_drift)
        fleet = fleet_view_html(*exposure.fleet_view(concat_days(device_exposure), concat_days(device_inventory)))
        # The page names each version with its training range, date and headline metric; the metadata keeps the ids.
        named = {asset: model_labels(reports.base_url, {asset: [version]})[version] for asset, version in versions.items()}
        html = model_page(device_classifier.metrics, anomaly_detector.metrics, named, concat_days(anomaly_scores),
                          model_settings.read_episodes(), drifts, model_settings.window_minutes, model_settings.target_fpr,
                          [fleet, metrics_fragment_html(line_metrics)])
        path = reports.write_text("model_report.html", html)
        return dg.MaterializeResult(metadata={**reports.metadata(path), **versions,
                                              "days": len(anomaly_scores)})

    return [daily_report, model_report]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
