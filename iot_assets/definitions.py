"""The code location: every asset, check, job, schedule, sensor and resource, assembled in one place."""

import dagster as dg

from iot_assets.assets import behaviour, exposure, flows, lines, reports
from iot_assets.automation import SCHEDULES, SENSORS
from iot_assets.jobs import JOBS
from iot_assets.memory import freeze_long_lived
from iot_assets.resources import build_resources
from iot_assets.settings import SETTINGS, Settings


def build_definitions(settings: Settings) -> dg.Definitions:
    """The code location for `settings` (tests and tools build it for a data folder of their own)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([flows, behaviour, exposure, lines, reports]),
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources=build_resources(settings),
    )


defs = build_definitions(SETTINGS)
freeze_long_lived()  # the code location lives as long as the process: the collections between days skip it
