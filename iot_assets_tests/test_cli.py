import os

from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets_tests.support.records import flow_line, json_archive, trailer


def test_decode_writes_parquet_and_reports_counts(sample_dir, tmp_path):
    result = CliRunner().invoke(main, ["decode", str(sample_dir / "nature_remo.tar.gz"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "nature_remo:" in result.output and "ok" in result.output
    assert (tmp_path / "nature_remo" / "flows.parquet").exists()


def test_decode_fails_loudly_on_an_archive_that_does_not_reconcile(tmp_path):
    path = json_archive(tmp_path / "nature_remo.tar.gz", flow_line() + b"garbage\n" + trailer(1))
    result = CliRunner().invoke(main, ["decode", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "rejected 1 x invalid_json" in result.output and "NOT RECONCILED" in result.output


def test_sample_command(tmp_path):
    result = CliRunner().invoke(main, ["sample", "--out", str(tmp_path), "--days", "1", "--scale", "0.02",
                                       "--devices", "nature_remo,qrio_hub"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nature_remo.tar.gz", "qrio_hub.tar.gz"]
    assert "MB/s" in result.output


def test_bad_settings_are_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IOT_ASSETS_START_DATE", "2019-13-01")
    result = CliRunner().invoke(main, ["decode", __file__, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "IOT_ASSETS_START_DATE" in result.output


def test_the_pipeline_process_lets_openmp_threads_sleep_unless_told_otherwise():
    import os
    import subprocess
    import sys

    probe = ("import os, iot_assets; "
             "print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_a_new_instance_gets_the_queue_and_pools_and_an_older_one_a_warning(tmp_path, monkeypatch, capsys):
    """`iot-assets run` and `iot-assets ui` share one instance setup: a new DAGSTER_HOME gets the queue with
    run-granularity pools; one written before them is named, with the fix, and left as it is."""
    import yaml

    from iot_assets.cli import _instance_home
    from iot_assets.config import Settings
    from iot_assets.defs.automation.jobs import LOCATION_TAG

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = _instance_home(Settings.from_env({"IOT_ASSETS_DATA_DIR": str(tmp_path / "data")}), dict(os.environ))
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert config["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == LOCATION_TAG
    assert capsys.readouterr().err == ""

    older = "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
    (home / "dagster.yaml").write_text(older)
    _instance_home(Settings.from_env({"IOT_ASSETS_DATA_DIR": str(tmp_path / "data")}), dict(os.environ))
    assert (home / "dagster.yaml").read_text() == older
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {home / 'dagster.yaml'} has no run-granularity concurrency pools")
