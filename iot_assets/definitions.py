"""The code location: every asset, check, job, sensor and resource, assembled in one place."""

import dagster as dg

from iot_assets.assets import behaviour, flows, reports
from iot_assets.jobs import (
    daily_flows_job, daily_job, daily_schedule, daily_scoring_job, ingest_archives_job, reports_job, training_job,
)
from iot_assets.resources import ParquetLakeIOManager, DataLake
from iot_assets.sensors import archive_sensor, changed_days_sensor

lake = DataLake.from_env()

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([flows, behaviour, reports]),
    jobs=[ingest_archives_job, daily_flows_job, training_job, daily_scoring_job, reports_job, daily_job],
    schedules=[daily_schedule],
    sensors=[archive_sensor, changed_days_sensor],
    resources={
        "lake": lake,
        "lake_io_manager": ParquetLakeIOManager(data_dir=lake.data_dir),
    },
)
