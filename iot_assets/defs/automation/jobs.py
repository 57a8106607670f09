"""Jobs: what gets materialized together, and the stages `iot-assets run` goes through."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

# Every run on a data location carries its tag: the instance's queue allows one run per location at a
# time (iot_assets.materialize.instance_yaml), whoever launched it (the CLI, the UI, a sensor).
LOCATION_TAG = "iot_assets/data_location"
PID_TAG = "iot_assets/pid"  # the process a CLI run executes in: a dead one makes the run an orphan

FLOW_ASSETS = ("decoded_flows", "collector_flows", "clean_flows", "clean_rejects", "flow_sample", "device_windows",
               "device_services", "line_views", "line_truth")
MODEL_ASSETS = ("device_classifier", "anomaly_detector", "drift_reference", "endpoint_signatures")
SCORING_ASSETS = ("device_inventory", "anomaly_scores", "anomaly_incidents", "feature_drift", "device_exposure",
                  "line_inventory", "device_vulnerabilities", "daily_report")
REPORT_ASSETS = ("rebaseline_decisions", "model_report", "exposure_report", "line_first_detected", "line_metrics",
                 "vulnerability_report")
# Imported with the landing zone: every daily run after it reads them, so they are there (empty without files).
FEED_ASSETS = ("nvd_feed", "nvd_cpe_matches", "kev_feed", "epss_feed")
STAGE_ASSETS = {
    "ingest_archives_job": ("raw_archives", "collector_files", "line_membership", *FEED_ASSETS),
    "daily_flows_job": FLOW_ASSETS,
    "training_job": MODEL_ASSETS,
    "daily_scoring_job": SCORING_ASSETS,
    "reports_job": REPORT_ASSETS,
}


def build_jobs(location: str) -> dict[str, UnresolvedAssetJobDefinition]:
    """The code location's jobs, their runs tagged with the data location."""
    tags = {LOCATION_TAG: location}

    def job(name: str, assets, description: str) -> UnresolvedAssetJobDefinition:
        return dg.define_asset_job(name, selection=dg.AssetSelection.assets(*assets), description=description,
                                   tags=tags)

    jobs = [
        job("ingest_archives_job", STAGE_ASSETS["ingest_archives_job"],
            "Checksum the landing zone, decode new or changed archives and collector files, import the "
            "vulnerability feeds."),
        job("daily_flows_job", FLOW_ASSETS, "Build days of flow tables and device windows from the staged archives."),
        job("training_job", MODEL_ASSETS, "Train and evaluate the device classifier, the anomaly detector and the "
                                          "drift reference on a time split."),
        job("daily_scoring_job", SCORING_ASSETS, "Classify the days' MACs, score their windows and drift with the "
                                                 "current models, and report."),
        job("reports_job", REPORT_ASSETS, "Write the model, exposure and line reports from the models and the "
                                          "scored days."),
        # Every daily asset: what a new day, or a day whose archives changed, needs rebuilt.
        job("daily_job", FLOW_ASSETS + SCORING_ASSETS, "Days end to end with the current models: flows, windows, "
                                                       "inventory, anomalies, drift, report."),
        job("rebaseline_job", ("anomaly_detector", "drift_reference"), "Refit the detector and drift reference of "
            "re-baselined devices on their new normal (config: rebaseline)."),
        # The line-level work of a day split by subscriber line (day x line shard partitions): one run per
        # day and shard, so that an ISP's day spreads over workers. An asset backfill orders a shard's days,
        # as each inventory reads the views of its window.
        job("line_shards_job", ("line_views_by_shard", "line_inventory_by_shard"),
            "Line views and line inventories of one day and one shard of the subscriber lines."),
    ]
    return {j.name: j for j in jobs}
