"""A small daily-partitioned asset job for the daemon test in test_services.py.

The daemon loads it through a workspace file (module `iot_assets_tests.service_defs`), as it
would load the real code location; the test then backfills days of it on a PostgreSQL instance.
"""

import os
import time

import dagster as dg

DAYS = dg.DailyPartitionsDefinition(start_date="2019-06-25", end_date="2019-07-01")


class HoldConfig(dg.Config):
    # Keeps each run in flight for a moment, so that queued runs would overlap if the run
    # coordinator let them: the test checks the limits on overlapping runs.
    hold_seconds: float = 2.0


@dg.asset(partitions_def=DAYS)
def day_stamp(context: dg.AssetExecutionContext, config: HoldConfig) -> dg.MaterializeResult:
    """The day of the partition, its length and the process that materialized it."""
    time.sleep(config.hold_seconds)
    window = context.partition_time_window
    return dg.MaterializeResult(metadata={
        "day": context.partition_key,
        "hours": (window.end - window.start).total_seconds() / 3600,
        "pid": os.getpid(),
    })


# In-process: one run is one process, without a further process per step.
daily_stamp_job = dg.define_asset_job("daily_stamp_job", selection=[day_stamp], partitions_def=DAYS,
                                      executor_def=dg.in_process_executor)

defs = dg.Definitions(assets=[day_stamp], jobs=[daily_stamp_job])
