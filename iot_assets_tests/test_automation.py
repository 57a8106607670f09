"""Sensors, schedule and drift checks, evaluated directly."""

from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pandas as pd

from iot_assets import drift
from iot_assets.features import FEATURES
from iot_assets.resources import DataLake
from iot_assets.sensors import archive_sensor


def test_archive_sensor_notices_new_and_changed_archives(tmp_path):
    lake = DataLake(data_dir=str(tmp_path), first_day="2019-06-25", last_day="2019-10-10")
    (tmp_path / "raw").mkdir()
    with dg.build_sensor_context(resources={"lake": lake}) as context:
        assert isinstance(archive_sensor(context), dg.SkipReason)
    (tmp_path / "raw" / "nature_remo.tar.gz").write_bytes(b"first")
    with dg.build_sensor_context(resources={"lake": lake}) as context:
        first = archive_sensor(context)
        assert isinstance(first, dg.RunRequest)
        cursor = context.cursor
    with dg.build_sensor_context(resources={"lake": lake}, cursor=cursor) as context:
        assert isinstance(archive_sensor(context), dg.SkipReason)
    (tmp_path / "raw" / "nature_remo.tar.gz").write_bytes(b"changed content")
    with dg.build_sensor_context(resources={"lake": lake}, cursor=cursor) as context:
        second = archive_sensor(context)
        assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key


def test_schedule_runs_the_day_that_ended():
    from iot_assets.definitions import defs

    schedule = defs.get_schedule_def("daily_job_schedule")
    with dg.build_schedule_context(scheduled_execution_time=datetime(2019, 7, 2, 0, 30, tzinfo=timezone.utc)) as context:
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2019-07-01"]


def _windows(days: int, services_shift: float = 0.0, start: str = "2019-07-01", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 24
    frame = pd.DataFrame(rng.normal(0.5, 0.05, size=(n, len(FEATURES))).clip(0, 1), columns=FEATURES)
    frame["w_log_own_flows"] = 3.0
    frame["w_log_flows"] = 4.0
    frame["w_scope_internet_share"] = 0.5
    service_columns = [c for c in FEATURES if c.startswith(("w_svc_", "w_port_b"))]
    frame[service_columns] = 0.0
    frame["w_svc_https_share"] = 1.0 - services_shift
    frame["w_svc_https_alt_share"] = services_shift
    frame["device_mac"] = "60:01:94:54:6b:e8"
    frame["device_name"] = "Nature Remo"
    frame["window_start"] = pd.date_range(start, periods=n, freq="h", tz="UTC")
    return frame


def test_drift_flags_a_changed_service_mix_and_not_a_normal_day():
    reference = drift.build_reference(_windows(10))
    normal = drift.summarize(drift.day_drift(_windows(1, start="2019-07-11", seed=1), reference))
    changed = drift.summarize(drift.day_drift(_windows(1, services_shift=0.9, start="2019-07-11", seed=1), reference))
    assert normal.loc[0, "level"] == "none"
    assert changed.loc[0, "level"] == "major" and "mix:services" in changed.loc[0, "top_drifted"]


def test_js_distance_bounds():
    p = np.array([0.5, 0.5, 0.0])
    assert drift.js_distance(p, p) < 1e-3
    assert drift.js_distance(np.array([1.0, 0, 0]), np.array([0, 0, 1.0])) > 0.99
