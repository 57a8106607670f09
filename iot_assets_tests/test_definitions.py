"""The whole code location loads, and its assets materialize on a sample."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_code_location_loads():
    from iot_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"raw_archives", "decoded_flows", "clean_flows", "clean_rejects"} <= keys
    assert defs.resolve_assets_def("decoded_flows").partitions_def is not None


def test_materialize_on_a_sample(sample_dir, tmp_path):
    from iot_assets.assets import flows
    from iot_assets.resources import DataLake, ParquetLakeIOManager

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data / "raw")
    (data / "raw" / "qrio_hub.tar.gz").write_bytes(b"a damaged archive")
    lake = DataLake(data_dir=str(data), first_day="2019-06-25", last_day="2019-10-10")
    resources = {"lake": lake, "lake_io_manager": ParquetLakeIOManager(data_dir=str(data))}
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
    assert set(remo) >= {"archive", "device", "lines", "flow_records", "stats_exported", "decoded", "rejected",
                         "rejects_by_reason"}

    # Staged once per content hash: a second materialization decodes nothing.
    again = dg.materialize([flows.raw_archives], resources=resources, instance=instance)
    assert again.asset_materializations_for_node("raw_archives")[0].metadata["decoded_now"].value == []

    day = "2019-06-26"
    result = dg.materialize([flows.raw_archives, flows.decoded_flows, flows.clean_flows], resources=resources,
                            instance=instance, partition_key=day,
                            selection=["decoded_flows", "clean_flows", "clean_rejects"])
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"decoded_schema": True, "day_reconciles": True, "clean_schema": True}
    clean = pd.read_parquet(data / "lake" / "clean_flows" / f"day={day}" / "part-0.parquet")
    assert set(clean["device_name"]) == {"Nature Remo", "Xiaomi Mijia LED", "JVC Kenwood HDTV IP camera",
                                         "PLANEX SmaCam PanTilt"}
    assert (clean["flow_start"].dt.strftime("%Y-%m-%d") == day).all()
    decoded = pd.read_parquet(data / "lake" / "decoded_flows" / f"day={day}" / "part-0.parquet")
    assert len(decoded) == len(clean)


def test_iot_assets_run_from_an_empty_landing_zone(tmp_path):
    """The README's main command, as a user runs it: a sample, then every asset, headless."""
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(tmp_path / "data")}
    env.pop("IOT_ASSETS_END_DATE", None)
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run", "--sample-days", "2", "--sample-scale", "0.02"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 108 partitions" not in done.stdout  # the range follows the sample
    assert (tmp_path / "data" / "lake" / "clean_flows" / "day=2019-06-26" / "part-0.parquet").exists()
    reports = tmp_path / "data" / "reports"
    assert (reports / "reconciliation.json").exists()
    assert "outputs:" in done.stdout
    classifier = json.loads((reports / "classifier_metrics.json").read_text())
    assert {"accuracy", "macro_f1", "labels", "confusion_matrix", "per_device", "train_range", "eval_range", "window",
            "features", "feature_importance", "baseline_per_flow"} <= set(classifier)
    assert classifier["train_range"][1] < classifier["eval_range"][0]
    detector = json.loads((reports / "anomaly_metrics.json").read_text())
    assert {"detector", "threshold", "fpr_clean", "roc_auc", "per_episode_type", "detectors_compared"} <= set(detector)
    assert len(detector["detectors_compared"]) >= 5
    assert (reports / "model_report.html").read_text().count("data:image/png;base64") >= 2
    assert "Inventory" in (reports / "daily" / "2019-06-26.html").read_text()
