"""Jobs: what gets materialized together."""

import dagster as dg

FLOW_ASSETS = ("decoded_flows", "clean_flows", "clean_rejects", "flow_sample", "device_windows", "line_views",
               "line_truth")
MODEL_ASSETS = ("device_classifier", "anomaly_detector", "drift_reference", "endpoint_signatures")
SCORING_ASSETS = ("device_inventory", "anomaly_scores", "anomaly_incidents", "feature_drift", "device_exposure", "line_inventory",
                  "device_vulnerabilities", "daily_report")
REPORT_ASSETS = ("rebaseline_decisions", "model_report", "exposure_report", "line_first_detected", "line_metrics",
                 "vulnerability_report")
# Imported with the landing zone: every daily run after it reads them, so they are there (empty without files).
FEED_ASSETS = ("nvd_feed", "nvd_cpe_matches", "kev_feed", "epss_feed")

ingest_archives_job = dg.define_asset_job(
    "ingest_archives_job",
    selection=dg.AssetSelection.assets("raw_archives", "line_membership", *FEED_ASSETS),
    description="Checksum the landing zone, decode new or changed archives, import the vulnerability feeds.",
)

daily_flows_job = dg.define_asset_job(
    "daily_flows_job",
    selection=dg.AssetSelection.assets(*FLOW_ASSETS),
    description="Build days of flow tables and device windows from the staged archives.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Train and evaluate the device classifier, the anomaly detector and the drift reference on a time split.",
)

daily_scoring_job = dg.define_asset_job(
    "daily_scoring_job",
    selection=dg.AssetSelection.assets(*SCORING_ASSETS),
    description="Classify the days' MACs, score their windows and drift, match their CVEs, and report.",
)

reports_job = dg.define_asset_job(
    "reports_job",
    selection=dg.AssetSelection.assets(*REPORT_ASSETS),
    description="Write the model, exposure, line and vulnerability reports from the models and the scored days.",
)

# Every daily asset: what a new day, or a day whose archives changed, needs rebuilt.
daily_job = dg.define_asset_job(
    "daily_job",
    selection=dg.AssetSelection.assets(*FLOW_ASSETS, *SCORING_ASSETS),
    description="Days end to end with the current models: flows, windows, inventory, anomalies, drift, report.",
)

rebaseline_job = dg.define_asset_job(
    "rebaseline_job",
    selection=dg.AssetSelection.assets("anomaly_detector", "drift_reference"),
    description="Refit the detector and drift reference of re-baselined devices on their new normal (config: rebaseline).",
)

# The line-level work of a day split by subscriber line (day x line shard partitions): one run per
# day and shard, so that an ISP's day spreads over workers. An asset backfill orders a shard's days,
# as each inventory reads the views of its window.
line_shards_job = dg.define_asset_job(
    "line_shards_job",
    selection=dg.AssetSelection.assets("line_views_by_shard", "line_inventory_by_shard"),
    description="Line views and line inventories of one day and one shard of the subscriber lines.",
)

JOBS = [ingest_archives_job, daily_flows_job, training_job, daily_scoring_job, reports_job, daily_job, rebaseline_job,
        line_shards_job]
