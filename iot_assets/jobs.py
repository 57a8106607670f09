"""Jobs: what gets materialized together."""

import dagster as dg


ingest_archives_job = dg.define_asset_job(
    "ingest_archives_job",
    selection=dg.AssetSelection.assets("raw_archives"),
    description="Checksum the landing zone and decode new or changed archives.",
)

daily_flows_job = dg.define_asset_job(
    "daily_flows_job",
    selection=dg.AssetSelection.assets("decoded_flows", "clean_flows", "clean_rejects"),
    description="Build one day of flow tables from the staged archives.",
)

# The order `iot-assets run` materializes everything in; each job runs over all its partitions.
PIPELINE = ("ingest_archives_job", "daily_flows_job")
