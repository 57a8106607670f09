"""The code location with Dagster's default multiprocess executor (a process per step): the baseline
benchmarks/daemon_runs.py times the shipped in-process executor against."""

import dagster as dg
from dagster._record import copy as copy_record

from iot_assets.config import Settings
from iot_assets.definitions import build_definitions

defs = copy_record(build_definitions(Settings.from_env()), executor=dg.multiprocess_executor)
