"""The code location: every group under `defs/`, loaded with the settings resolved at load.

Every run of the location executes in one process (`in_process_executor`): a daemon-launched run
starting a process per step paid the imports and the model loads once per step (an ingest run took
290 s instead of 10 s on a loaded machine). deploy/celery_definitions.py replaces the executor.
Every asset is in the concurrency pool of its data location (`data_location_pool`): with the
instance's run-granularity pools (iot_assets.materialize.instance_yaml, deploy/dagster.yaml) a run
that writes a location waits in the queue while another run holds it, whoever launched either
(a sensor, `iot-assets run`, the UI's asset backfills, which carry no job tag).
"""

from pathlib import Path
from urllib.parse import quote

import dagster as dg
from dagster._record import copy as copy_record

from iot_assets.config import Settings
from iot_assets.core.memory import freeze_long_lived
from iot_assets.defs.loading import LOADING, Deployment


def data_location_pool(data_dir: str) -> str:
    """The concurrency pool of a data location: its path or URL, whitespace escaped (a pool name has none)."""
    return "iot_assets:" + quote(data_dir, safe="/:@")


def build_definitions(settings: Settings) -> dg.Definitions:
    """The code location for `settings` (tests and tools build it for a data folder of their own)."""
    token = LOADING.set(Deployment.of(settings))
    try:
        loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    finally:
        LOADING.reset(token)
    pool = data_location_pool(settings.data_dir)
    assets = [_in_pool(a, pool) if isinstance(a, dg.AssetsDefinition) else a for a in loaded.assets or []]
    return copy_record(loaded, assets=assets, executor=dg.in_process_executor)


def _in_pool(assets_def: dg.AssetsDefinition, pool: str) -> dg.AssetsDefinition:
    """The asset with its op in `pool`: set here, once for every group, so that no asset is left out."""
    op = assets_def.node_def
    if not isinstance(op, dg.OpDefinition) or op.pool == pool:
        return assets_def
    # OpDefinition.with_replaced_properties, with the pool replaced.
    pooled = dg.OpDefinition.dagster_internal_init(
        compute_fn=op.compute_fn, name=op.name,
        ins={d.name: dg.In.from_definition(d) for d in op.input_defs},
        outs={d.name: dg.Out.from_definition(d) for d in op.output_defs},
        description=op.description, config_schema=op.config_schema,
        required_resource_keys=op.required_resource_keys, tags=op.tags, version=None,
        retry_policy=op.retry_policy, code_version=op.version, pool=pool)
    return assets_def.__class__.dagster_internal_init(**{**assets_def.get_attributes_dict(), "node_def": pooled})


@dg.definitions
def defs() -> dg.Definitions:
    """The deployment the environment describes (IOT_ASSETS_*), resolved when Dagster loads the code location."""
    loaded = build_definitions(Settings.from_env())
    freeze_long_lived()  # the code location lives as long as the process: the collections between days skip it
    return loaded
