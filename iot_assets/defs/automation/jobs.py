"""Jobs: what gets materialized together, and the stages `iot-assets run` goes through.

Every job is a selection, never a list of names: a stage job takes the assets that declare that
stage (`iot_assets.defs.stages`, a tag on the asset), whatever their group, so a new asset is in
its stage's job by what it declares. A job holds one partitions definition (Dagster's rule): with
IOT_ASSETS_LINE_SHARDS above 1 the subscriber-line group's daily assets are day x shard, and each
daily stage gets a second job for them, `<stage>_by_line_shard_job`, run after the first.
"""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from iot_assets.defs.partitions import Partitions
from iot_assets.defs.stages import (
    DAILY_FLOWS,
    DAILY_SCORING,
    DAILY_STAGES,
    INGEST,
    REPORTS,
    STAGE_TAG,
    STAGES,
    TRAINING,
)

# Every run on a data location carries its tag: the instance's queue allows one run per location at a
# time (iot_assets.materialize.instance_yaml), whoever launched it (the CLI, the UI, a sensor).
LOCATION_TAG = "iot_assets/data_location"
PID_TAG = "iot_assets/pid"  # the process a CLI run executes in: a dead one makes the run an orphan
# The queue starts the location's job runs (the sensors' ingest and daily builds) before the runs of the
# UI's asset backfills (priority 0) waiting for the same pool: a backfill of older days also targets the
# dependents of later days (the day after, a week, two weeks: the partition mappings of the lookbacks),
# which fail while their own day is still waiting to be built.
QUEUE_PRIORITY = {"dagster/priority": "1"}

# The group whose daily assets are partitioned day x line shard when the lines are sharded.
LINE_SHARDED_GROUP = "lines"

# Each stage's job: its name (as the UI and the schedules know it) and what it does.
STAGE_JOBS = {
    INGEST: ("ingest_archives_job", ("Checksum the landing zone, decode new or changed archives and collector "
                                     "files, import the vulnerability feeds and the subscriber lines.")),
    DAILY_FLOWS: ("daily_flows_job", ("Build days of flow tables, device windows and line views from the staged "
                                      "archives.")),
    TRAINING: ("training_job", ("Train and evaluate the device classifier, the anomaly detector, the drift "
                                "reference and the endpoint signatures on a time split.")),
    DAILY_SCORING: ("daily_scoring_job", ("Classify the days' MACs, score their windows, drift, exposure and line "
                                          "inventories with the current models, and report.")),
    REPORTS: ("reports_job", ("Write the model, exposure, vulnerability and line reports from the models and the "
                              "scored days.")),
}


def stage_selection(stage: str) -> dg.AssetSelection:
    """The assets that declare `stage`."""
    return dg.AssetSelection.tag(STAGE_TAG, stage)


def line_shard_job_name(job_name: str) -> str:
    """`daily_flows_job` -> `daily_flows_by_line_shard_job`: the job of a daily job's day x shard assets."""
    return job_name.removesuffix("_job") + "_by_line_shard_job"


def build_jobs(location: str, parts: Partitions) -> dict[str, UnresolvedAssetJobDefinition]:
    """The code location's jobs, their runs tagged with the data location."""
    tags = {LOCATION_TAG: location, **QUEUE_PRIORITY}
    sharded = dg.AssetSelection.groups(LINE_SHARDED_GROUP) if parts.lines_sharded else None

    def job(name: str, selection: dg.AssetSelection, description: str) -> UnresolvedAssetJobDefinition:
        return dg.define_asset_job(name, selection=selection, description=description, tags=tags)

    def daily_jobs(name: str, selection: dg.AssetSelection, description: str) -> list[UnresolvedAssetJobDefinition]:
        if sharded is None:
            return [job(name, selection, description)]
        return [job(name, selection - sharded, description),
                job(line_shard_job_name(name), selection & sharded,
                    f"{description} Its subscriber-line assets, on day x line shard partitions.")]

    jobs = []
    for stage in STAGES:
        name, description = STAGE_JOBS[stage]
        jobs += daily_jobs(name, stage_selection(stage), description) if stage in DAILY_STAGES \
            else [job(name, stage_selection(stage), description)]
    # Every daily asset: what a new day, or a day whose archives changed, needs rebuilt.
    jobs += daily_jobs("daily_job", stage_selection(DAILY_FLOWS) | stage_selection(DAILY_SCORING),
                       "Days end to end with the current models: flows, windows, inventory, anomalies, drift, report.")
    # The anomaly detector and the models trained on it (the drift reference), refitted without the classifier.
    refitted = dg.AssetSelection.assets("anomaly_detector").downstream() & stage_selection(TRAINING)
    jobs.append(job("rebaseline_job", refitted,
                    "Refit the detector and drift reference of re-baselined devices on their new normal "
                    "(config: rebaseline)."))
    return {j.name: j for j in jobs}
