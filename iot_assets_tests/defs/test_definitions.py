"""The whole code location loads, its asset graph is what we meant, and its assets materialize on a sample."""

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from iot_assets.defs.stages import STAGE_TAG
from iot_assets.materialize import failure_message
from iot_assets_tests.support.definitions import assets_for, resources_for

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("snapshots") / "asset_graph.json"


def graph_snapshot(defs: dg.Definitions) -> dict:
    """Asset keys with their partitioning and checks, jobs, schedules and sensors: what a change should not move by accident."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "partitioned": node.partitions_def is not None,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
            "stage": node.tags.get(STAGE_TAG),  # which stage's jobs it is in
        }
        if isinstance(node.partitions_def, dg.MultiPartitionsDefinition):  # day x line shard
            assets[key.to_user_string()]["dimensions"] = [d.name for d in node.partitions_def.partitions_defs]
    repo = defs.get_repository_def()
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
    }


def test_code_location_loads_and_matches_its_snapshot():
    from iot_assets.definitions import defs

    loaded = defs()
    dg.Definitions.validate_loadable(loaded)
    current = graph_snapshot(loaded)
    if os.environ.get("IOT_ASSETS_UPDATE_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, ("the asset graph changed; if that was meant, rerun with IOT_ASSETS_UPDATE_SNAPSHOT=1 "
                                 "and commit iot_assets_tests/snapshots/asset_graph.json")


def test_no_asset_builds_a_path_to_another_assets_data():
    package = ROOT / "iot_assets"
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "io":
            continue  # the one place that knows where bytes live
        text = path.read_text()
        for pattern in (r"""/ ?["'](lake|models|staging)["']""", r"""["'](lake|models|staging)/""",
                        r"import (joblib|pickle|cloudpickle|dill)", r"(joblib|pickle)\.(dump|load)"):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_materialize_on_a_sample(sample_dir, tmp_path):
    flows = assets_for()

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data / "raw")
    (data / "raw" / "qrio_hub.tar.gz").write_bytes(b"a damaged archive")
    resources = resources_for(data)
    instance = dg.DagsterInstance.ephemeral()

    result = dg.materialize([flows.raw_archives], resources=resources, instance=instance)
    assert result.success  # a damaged archive fails its check, not the run
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["archives_reconcile"].passed and "qrio_hub" in checks["archives_reconcile"].description
    report = json.loads((data / "reports" / "reconciliation.json").read_text())
    rows = {r["archive"]: r for r in report["archives"]}
    assert set(rows) == {"nature_remo", "xiaomi_mijia_led", "jvc_kenwood_hdtv_ip_camera", "planex_smacam_pantilt", "qrio_hub"}
    remo = rows["nature_remo"]
    assert remo["flow_records"] == remo["decoded"] + remo["rejected"] == remo["stats_exported"] > 0
    assert rows["qrio_hub"]["reconciled"] is False and rows["qrio_hub"]["error"]

    # Staged once per content hash: a second materialization decodes nothing.
    again = dg.materialize([flows.raw_archives], resources=resources, instance=instance)
    assert again.asset_materializations_for_node("raw_archives")[0].metadata["decoded_now"].value == []

    day = "2019-06-26"
    result = dg.materialize([flows.raw_archives, flows.decoded_flows, flows.collector_files, flows.collector_flows,
                             flows.clean_flows], resources=resources, instance=instance, partition_key=day,
                            selection=["decoded_flows", "clean_flows", "clean_rejects", "flow_sample"])
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"decoded_schema": True, "decoded_matches_staging": True, "day_reconciles": True,
                      "clean_schema": True, "flows_counted_once": True}
    clean = pd.read_parquet(data / "lake" / "clean_flows" / f"day={day}" / "part-0.parquet")
    assert set(clean["device_name"]) == {"Nature Remo", "Xiaomi Mijia LED", "JVC Kenwood HDTV IP camera",
                                         "PLANEX SmaCam PanTilt"}
    assert (clean["flow_start"].dt.strftime("%Y-%m-%d") == day).all()
    decoded = pd.read_parquet(data / "lake" / "decoded_flows" / f"day={day}" / "part-0.parquet")
    summary_days = {r["archive"]: json.loads(r["rows_per_day"]).get(day, 0)
                    for r in pd.read_parquet(data / "lake" / "raw_archives" / "part-0.parquet").to_dict("records")}
    assert len(decoded) == len(clean) == sum(summary_days.values()) > 0


def test_a_missing_staged_file_fails_its_day_naming_the_file(sample_dir, tmp_path):
    flows = assets_for()

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data / "raw")
    resources = resources_for(data)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([flows.raw_archives], resources=resources, instance=instance).success
    staged = next((data / "staging" / "nature_remo").glob("*/flows.parquet"))
    staged.unlink()
    result = dg.materialize([flows.raw_archives, flows.decoded_flows], resources=resources, instance=instance,
                            partition_key="2019-06-25", selection=["decoded_flows"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert str(staged) in failure_message(failure.event_specific_data.error)
    assert not (data / "lake" / "decoded_flows" / "day=2019-06-25").exists()


@pytest.mark.slow
def test_iot_assets_run_from_an_empty_landing_zone(tmp_path):
    """The README's main command, as a user runs it: a sample, then every asset, headless."""
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(tmp_path / "data")}
    for name in ("IOT_ASSETS_END_DATE", "DAGSTER_HOME", "IOT_ASSETS_EPISODES"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run", "--sample-days", "8", "--sample-scale", "0.02"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(8 of 8 days)" in done.stdout  # the range follows the sample
    data = tmp_path / "data"
    days = sorted(p.name for p in (data / "lake" / "clean_flows").iterdir())
    assert days == [f"day={date(2019, 6, 25) + timedelta(days=d)}" for d in range(8)]
    reports = data / "reports"
    classifier = json.loads((reports / "classifier_metrics.json").read_text())
    assert classifier["train_range"][1] < classifier["eval_range"][0]
    # Every device with flows on the training days is a class (at this scale the mouse hub has none).
    clean = pd.read_parquet(data / "lake" / "clean_flows", columns=["device_name", "day"])
    trained = clean.loc[clean["day"].astype(str) <= classifier["train_range"][1], "device_name"].dropna()
    assert classifier["accuracy"] > 0.8 and classifier["labels"] == sorted(set(trained)) and len(set(trained)) >= 24
    detector = json.loads((reports / "anomaly_metrics.json").read_text())
    assert detector["devices_modelled"] >= 20  # every device with two days of history has its own detector
    assert set(detector["detectors_compared"]) == {"ECOD", "COPOD", "KNN", "LOF"}  # every kind, compared
    assert detector["detectors_compared"][detector["detector"]]["within_budget"]
    # Open set: every trained model is left out once, but those whose evaluation days are all inside an
    # injected episode or its aftermath (left out of the classifier's evaluation); incidents and
    # per-device FPR on the evaluation days.
    attacked = set(pd.read_csv(data / "episodes" / "episodes.csv")["device"])
    assert set(classifier["open_set"]["left_out"]) <= set(classifier["labels"])
    assert set(classifier["labels"]) - set(classifier["open_set"]["left_out"]) <= attacked
    assert classifier["open_set"]["known_device_days"] > classifier["open_set"]["left_out_device_days"] > 0
    assert 0 < classifier["day_level"]["accuracy"] <= 1
    assert detector["incidents"]["clean_device_days"] > 0
    assert len(detector["per_device"]) >= detector["devices_modelled"] - len(attacked)
    assert all(d["clean_windows"] > 0 and 0 <= d["fpr_clean"] <= 0.1 for d in detector["per_device"].values())
    daily = (reports / "daily" / "2019-07-02.html").read_text()
    assert "<h2>Incidents</h2>" in daily and daily.index("Needs attention") < daily.index("<h2>Incidents</h2>")
    # Every scored row names the model version that produced it, and that version is stored.
    scores = pd.read_parquet(data / "lake" / "anomaly_scores")
    inventory = pd.read_parquet(data / "lake" / "device_inventory")
    detector_version = (data / "models" / "anomaly_detector" / "current.json").read_text()
    assert scores["model_version"].nunique() == 1 and scores["model_version"].iloc[0] in detector_version
    assert (data / "models" / "device_classifier" / inventory["model_version"].iloc[0] / "kind.json").exists()
    assert scores["has_model"].mean() > 0.8
    page = (reports / "model_report.html").read_text()
    assert page.count("data:image/png;base64") >= 2 and inventory["model_version"].iloc[0] in page
    assert "Inventory" in (reports / "daily" / "2019-06-26.html").read_text()
    # The same command again: the sample's range is remembered, nothing is built, no version changes.
    served = {asset: (data / "models" / asset / "current.json").read_text()
              for asset in ("device_classifier", "anomaly_detector", "drift_reference")}
    again = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=env, capture_output=True, text=True,
                           cwd=ROOT, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    for job in ("daily_flows_job", "training_job", "daily_scoring_job", "reports_job"):
        assert f"{job}: nothing to build" in again.stdout, again.stdout
    assert served == {asset: (data / "models" / asset / "current.json").read_text() for asset in served}
