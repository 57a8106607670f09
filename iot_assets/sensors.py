"""Sensors: new or changed archives in the landing zone start the pipeline."""


import hashlib
import json

import dagster as dg

from iot_assets.jobs import daily_flows_job, ingest_archives_job
from iot_assets.partitions import daily_partitions
from iot_assets.resources import DataLake


def landing_zone_fingerprint(lake: DataLake) -> str:
    """Names, sizes and modification times of the archive files: cheap, no reading."""
    if not lake.raw_dir.exists():
        return ""
    entries = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in lake.raw_dir.iterdir() if ".tar.gz" in p.name
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20] if entries else ""


@dg.sensor(job=ingest_archives_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def archive_sensor(context: dg.SensorEvaluationContext, lake: DataLake):
    """Requests a landing-zone scan when archives appear or change."""
    fingerprint = landing_zone_fingerprint(lake)
    if not fingerprint or fingerprint == context.cursor:
        return dg.SkipReason("no new or changed archives")
    context.update_cursor(fingerprint)
    return dg.RunRequest(run_key=f"landing-zone-{fingerprint}")


@dg.asset_sensor(asset_key=dg.AssetKey("raw_archives"), job=daily_flows_job, default_status=dg.DefaultSensorStatus.RUNNING)
def changed_days_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """Rebuilds the days that newly decoded archives touch."""
    materialization = asset_event.asset_materialization
    changed = materialization.metadata.get("changed_days") if materialization else None
    days = changed.value if changed else []
    partitions = set(daily_partitions.get_partition_keys())
    for day in days:
        if day in partitions and not _built_since(context.instance, day, asset_event.timestamp):
            yield dg.RunRequest(run_key=f"{asset_event.run_id}-{day}", partition_key=day)


def _built_since(instance: dg.DagsterInstance, day: str, timestamp: float) -> bool:
    """Whether the day's clean flows were already rebuilt after the archives changed (by `iot-assets run`, say)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("clean_flows"), asset_partitions=[day], after_timestamp=timestamp),
        limit=1,
    ).records
    return bool(records)
