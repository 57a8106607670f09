"""Opening the UI on an unchanged landing zone changes nothing: `iot-assets ui` (webserver and daemon, with the
sensors and schedules in their default states) runs for a few minutes over a sample `iot-assets run` built, and
no run is launched, no served model version changes and the promotion log gets no record.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.run_request import InstigatorType

from iot_assets.ui import free_port
from iot_assets_tests.support.browser import ROOT, built_sample, wait_for_url

DAYS = ["2019-06-25", "2019-06-26", "2019-06-27"]
MODEL_ASSETS = ("device_classifier", "anomaly_detector", "drift_reference")
IDLE_SECONDS = 150  # sensors tick every 60 s: at least two ticks of each after the daemon's first

pytestmark = pytest.mark.slow


def _model_state(data: Path) -> dict[str, tuple[str, str]]:
    """Per model asset: its current.json and its promotion log, as text."""
    state = {}
    for asset in MODEL_ASSETS:
        folder = data / "models" / asset
        log = folder / "promotions.jsonl"
        state[asset] = ((folder / "current.json").read_text(), log.read_text() if log.exists() else "")
    return state


def _sensor_ticks(instance: dg.DagsterInstance) -> dict[str, list]:
    """Each sensor's ticks (newest first), by name, from the instance the daemon writes them to."""
    ticks = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        ticks[state.name] = instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return ticks


def test_the_daemon_on_an_unchanged_landing_zone_launches_nothing_and_changes_no_served_model(tmp_path):
    work = tmp_path
    env = built_sample(work, DAYS)
    data = work / "data"
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    runs_before = {run.run_id for run in instance.get_runs()}
    models_before = _model_state(data)
    # The first training served each model, and said so once.
    for asset, (_, log) in models_before.items():
        (record,) = [json.loads(line) for line in log.splitlines()]
        assert record["event"] == "promoted" and record["from_version"] is None, (asset, record)

    ui_port, reports_port = free_port(), free_port()
    log = work / "iot_assets_ui.log"
    ui = subprocess.Popen([sys.executable, "-m", "iot_assets.cli", "ui", "--port", str(ui_port),
                           "--reports-port", str(reports_port)],
                          env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for_url(f"http://127.0.0.1:{ui_port}/server_info", ui, log)
        deadline = time.time() + IDLE_SECONDS
        while time.time() < deadline:
            assert ui.poll() is None, log.read_text()[-3000:]
            time.sleep(5)
        ticks = _sensor_ticks(instance)
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)

    # The daemon was there and looked: the sensors that run by default ticked, and every tick skipped.
    for name in ("archive_sensor", "changed_days_sensor", "automation_sensor"):
        assert len(ticks.get(name, [])) >= 2, (name, {n: len(t) for n, t in ticks.items()}, log.read_text()[-3000:])
    launched = {name: [(t.status.value, t.run_ids) for t in sensor_ticks if t.run_ids]
                for name, sensor_ticks in ticks.items()}
    assert all(not runs for runs in launched.values()), launched
    new_runs = [(run.job_name, run.tags.get("dagster/sensor_name")) for run in instance.get_runs()
                if run.run_id not in runs_before]
    assert new_runs == []
    assert _model_state(data) == models_before
