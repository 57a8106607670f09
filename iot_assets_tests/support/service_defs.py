"""A small daily-partitioned asset job for the daemon test in test_services.py.

The daemon loads it through a workspace file (module `iot_assets_tests.support.service_defs`), as it
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


# --- the iot-assets code location itself, its steps on Celery workers --------------------------------


def iot_assets_celery_defs() -> dg.Definitions:
    """The real code location with Celery as every job's executor: deploy/celery_definitions.py, as shipped.

    Settings come from this process's environment (IOT_ASSETS_DATA_DIR may be an s3:// lake), so that
    the process that submits a run and every Celery worker that runs one of its steps build the same
    Definitions on the same lake.
    """
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "celery_definitions.py"
    spec = importlib.util.spec_from_file_location("iot_assets_deploy_celery_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs()


def iot_assets_celery_job(job_name: str) -> dg.JobDefinition:
    """One job of the code location on Celery; with `dg.build_reconstructable_job` the workers rebuild it."""
    return iot_assets_celery_defs().resolve_job_def(job_name)


def reconstructable_celery_job(job_name: str):
    """What `dg.execute_job` takes: the workers import this module and call iot_assets_celery_job(job_name)."""
    return dg.build_reconstructable_job("iot_assets_tests.support.service_defs", "iot_assets_celery_job",
                                        reconstructable_args=(job_name,))
