"""The code location: every group under `defs/`, loaded with the settings resolved at load."""

from pathlib import Path

import dagster as dg

from iot_assets.config import Settings
from iot_assets.core.memory import freeze_long_lived
from iot_assets.defs.loading import LOADING, Deployment


def build_definitions(settings: Settings) -> dg.Definitions:
    """The code location for `settings` (tests and tools build it for a data folder of their own)."""
    token = LOADING.set(Deployment.of(settings))
    try:
        return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    finally:
        LOADING.reset(token)


@dg.definitions
def defs() -> dg.Definitions:
    """The deployment the environment describes (IOT_ASSETS_*), resolved when Dagster loads the code location."""
    loaded = build_definitions(Settings.from_env())
    freeze_long_lived()  # the code location lives as long as the process: the collections between days skip it
    return loaded
