"""The daily partitions: one per day of flows, the range from the environment."""

from datetime import timedelta

import dagster as dg

from iot_assets.settings import Settings

_settings = Settings.from_env()

# Dagster's end_date is exclusive; the configured last day is inclusive.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=_settings.first_day.isoformat(),
    end_date=(_settings.last_day + timedelta(days=1)).isoformat(),
    timezone="UTC",
)
