"""Jobs: what gets materialized together."""

import dagster as dg


ingest_archives_job = dg.define_asset_job(
    "ingest_archives_job",
    selection=dg.AssetSelection.assets("raw_archives"),
    description="Checksum the landing zone and decode new or changed archives.",
)

daily_flows_job = dg.define_asset_job(
    "daily_flows_job",
    selection=dg.AssetSelection.assets("decoded_flows", "clean_flows", "clean_rejects", "device_windows"),
    description="Build one day of flow tables and device windows from the staged archives.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("device_classifier", "anomaly_detector", "drift_reference"),
    description="Train and evaluate the device classifier and the anomaly detector on a time split.",
)

daily_scoring_job = dg.define_asset_job(
    "daily_scoring_job",
    selection=dg.AssetSelection.assets("device_inventory", "anomaly_scores", "feature_drift", "daily_report"),
    description="Classify the day's MACs and score the day's windows with the trained models.",
)

reports_job = dg.define_asset_job(
    "reports_job",
    selection=dg.AssetSelection.assets("model_report"),
    description="Write the model report from the models and the scored days.",
)

# Every daily asset, for the schedule: yesterday's flows, windows, scores, drift and report.
daily_job = dg.define_asset_job(
    "daily_job",
    selection=dg.AssetSelection.assets("decoded_flows", "clean_flows", "clean_rejects", "device_windows",
                                       "device_inventory", "anomaly_scores", "feature_drift", "daily_report"),
    description="One day end to end with the trained models: flows, windows, inventory, anomalies, drift, report.",
)

# Runs shortly after midnight UTC for the day that just ended.
daily_schedule = dg.build_schedule_from_partitioned_job(daily_job, minute_of_hour=30)

# The order `iot-assets run` materializes everything in; each job runs over all its partitions.
PIPELINE = ("ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job", "reports_job")
