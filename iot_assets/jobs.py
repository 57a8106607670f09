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
    selection=dg.AssetSelection.assets("device_classifier", "anomaly_detector"),
    description="Train and evaluate the device classifier and the anomaly detector on a time split.",
)

daily_scoring_job = dg.define_asset_job(
    "daily_scoring_job",
    selection=dg.AssetSelection.assets("device_inventory", "anomaly_scores"),
    description="Classify the day's MACs and score the day's windows with the trained models.",
)

# The order `iot-assets run` materializes everything in; each job runs over all its partitions.
PIPELINE = ("ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job")
