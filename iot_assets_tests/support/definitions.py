"""The code location, its resources and its assets, built for a data folder of a test's own."""

from pathlib import Path
from types import SimpleNamespace

import dagster as dg

from iot_assets.config import Settings
from iot_assets.defs.resources import build_resources


def settings_for(data: Path, **env) -> Settings:
    return Settings.from_env({"IOT_ASSETS_DATA_DIR": str(data), **env})


def pseudonymiser_for(data: Path, **env):
    """The mapping the deployment of `data` applies (its key: the test's default key file, or one in `env`)."""
    from iot_assets.core.pseudonymiser import Pseudonymiser

    return Pseudonymiser.from_settings(settings_for(data, **env))


def resources_for(data: Path, **env) -> dict:
    return build_resources(settings_for(data, **env))


def definitions_for(data: Path, **env) -> dg.Definitions:
    from iot_assets.definitions import build_definitions

    return build_definitions(settings_for(data, **env))


def assets_for(**env) -> SimpleNamespace:
    """The code location's assets by name (a multi-asset by its op's name), for `dg.materialize` in tests."""
    defs = definitions_for(Path("data"), **env)
    return SimpleNamespace(**{a.node_def.name: a for a in defs.assets if isinstance(a, dg.AssetsDefinition)})
