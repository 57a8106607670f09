"""iot-assets: IoT device inventory, anomalies and drift from IPFIX flow records."""

import os

# XGBoost's OpenMP threads spin while they wait by default: on cores shared with other processes
# that spinning took 47-172 s of CPU for a per-flow baseline fit that takes 2 s with waiting
# threads asleep (same model). Read when the OpenMP runtime loads, so before anything imports
# xgboost; every process of the project (the CLI, Dagster's code servers and run workers) imports
# this package first. An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
