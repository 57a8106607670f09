"""The iot-assets code location with every job's steps on Celery workers (dagster-celery).

The same assets, checks, jobs, schedules, sensors and resources as `iot_assets.definitions`, with
`celery_executor` as the executor of every job: launch its runs with the run config of
deploy/celery_run_config.yaml (broker and backend), and start the workers with the same file and
the same environment (IOT_ASSETS_*, AWS_*, DAGSTER_HOME). Load it as the code location with

    load_from:
      - python_file: {relative_path: deploy/celery_definitions.py, location_name: iot_assets, working_directory: .}

Tested: iot_assets_tests/test_services.py::test_iot_assets_jobs_on_two_celery_workers_match_a_local_run
loads this file (through iot_assets_tests/service_defs.py) in the submitting process and in both workers.
"""

import dagster as dg
from dagster_celery import celery_executor

from iot_assets.config import Settings
from iot_assets.definitions import build_definitions


def celery_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The code location for `settings` (default: from the environment), every job on Celery."""
    base = build_definitions(settings or Settings.from_env())
    return dg.Definitions(assets=base.assets, asset_checks=base.asset_checks, jobs=base.jobs,
                          schedules=base.schedules, sensors=base.sensors, resources=base.resources,
                          executor=celery_executor)


@dg.definitions
def defs() -> dg.Definitions:
    return celery_definitions()
