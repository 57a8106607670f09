"""Jobs: what gets materialized together."""

import dagster as dg

from iot_assets.partitions import daily_partitions

ingest_archives_job = dg.define_asset_job(
    "ingest_archives_job",
    selection=dg.AssetSelection.assets("raw_archives"),
    description="Checksum the landing zone and decode new or changed archives.",
)

daily_flows_job = dg.define_asset_job(
    "daily_flows_job",
    selection=dg.AssetSelection.assets("decoded_flows", "clean_flows", "clean_rejects"),
    partitions_def=daily_partitions,
    description="Build one day of flow tables from the staged archives.",
)

# The order `iot-assets run` materializes everything in; each job runs over all its partitions.
PIPELINE = ("ingest_archives_job", "daily_flows_job")
