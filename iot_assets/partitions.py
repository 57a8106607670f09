"""The daily partitions: one per day of flows, the range from the settings."""

import warnings
from datetime import datetime, timedelta, timezone

import dagster as dg

from iot_assets.settings import SETTINGS

# Dagster's end_date is exclusive; the configured last day is inclusive.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=SETTINGS.first_day.isoformat(),
    end_date=(SETTINGS.last_day + timedelta(days=1)).isoformat(),
    timezone="UTC",
)

# Ranges of days in one run (a backfill, `iot-assets run`), at most DAYS_PER_RUN each: the
# per-run cost (a process, loading the models) is paid once per range, and the memory a run
# holds grows with its days, not with the backfill. Each day is still its own file.
DAYS_PER_RUN = SETTINGS.days_per_run
ranged_backfill = dg.BackfillPolicy.multi_run(max_partitions_per_run=DAYS_PER_RUN)
# Beta parameters in Dagster 1.13 that every daily asset and every model uses.
for _parameter in ("backfill_policy", "data_version"):
    warnings.filterwarnings("ignore", message=f"Parameter `{_parameter}`", category=dg.BetaWarning)


def day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def previous_day(day: str) -> str:
    return (datetime.fromisoformat(day) - timedelta(days=1)).date().isoformat()
