"""The whole pipeline on an object store (SeaweedFS, a real S3 server started by the test) gives what a local run gives."""

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from upath import UPath

from iot_assets.synthetic import sample
from iot_assets_tests.support.services import seaweedfs_s3  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ["nature_remo", "xiaomi_mijia_led", "qrio_hub"]
LAST_DAY = "2019-06-28"


def _run(data_url: str, home: Path, env: dict) -> str:
    env = {**os.environ, **env, "IOT_ASSETS_DATA_DIR": data_url, "IOT_ASSETS_END_DATE": LAST_DAY,
           "DAGSTER_HOME": str(home)}
    env.pop("IOT_ASSETS_EPISODES", None)
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _rows_per_day(root: UPath, asset: str) -> dict[str, int]:
    return {p.name: pd.read_parquet(p.path + "/part-0.parquet", filesystem=p.fs).shape[0]
            for p in sorted((root / "lake" / asset).iterdir(), key=lambda p: p.name)}


@pytest.mark.slow
def test_the_sample_on_s3_matches_a_local_run(seaweedfs_s3, tmp_path, monkeypatch):  # noqa: F811
    raw = tmp_path / "raw"
    sample.generate(raw, date(2019, 6, 25), 4, scale=0.02, seed=11, devices=DEVICES)
    for name, value in seaweedfs_s3.env.items():
        monkeypatch.setenv(name, value)  # for this process's reads; the runs get them in their environment
    remote_url = seaweedfs_s3.url("iot")
    remote = UPath(remote_url, endpoint_url=seaweedfs_s3.endpoint_url)
    for archive in sorted(raw.iterdir()):
        remote.fs.put_file(str(archive), f"{remote.path}/raw/{archive.name}")
    local = tmp_path / "local"
    (local / "raw").mkdir(parents=True)
    for archive in raw.iterdir():
        (local / "raw" / archive.name).write_bytes(archive.read_bytes())

    _run(remote_url, tmp_path / "home_s3", seaweedfs_s3.env)
    _run(str(local), tmp_path / "home_local", {})

    here = UPath(local)
    # Nothing of the run went to local disk but the Dagster instance.
    assert not (tmp_path / "iot").exists()
    for asset in ("decoded_flows", "clean_flows", "device_windows", "device_inventory", "anomaly_scores",
                  "feature_drift", "device_exposure"):
        on_s3 = _rows_per_day(remote, asset)
        assert on_s3 == _rows_per_day(here, asset) and len(on_s3) == 4, asset
    assert sum(_rows_per_day(remote, "clean_flows").values()) > 1000
    for name in ("classifier_metrics.json", "anomaly_metrics.json", "exposure.json", "reconciliation.json"):
        s3_doc = json.loads((remote / "reports" / name).read_text())
        local_doc = json.loads((local / "reports" / name).read_text())
        if name == "classifier_metrics.json":
            assert s3_doc["accuracy"] == local_doc["accuracy"] and s3_doc["confusion_matrix"] == local_doc["confusion_matrix"]
        elif name == "anomaly_metrics.json":
            assert s3_doc["detector"] == local_doc["detector"] and s3_doc["devices_modelled"] == local_doc["devices_modelled"] == 3
        else:
            assert s3_doc == local_doc, name
    # The same models, so the same versions: a version is the content hash of the model's files.
    for model in ("device_classifier", "anomaly_detector", "drift_reference"):
        assert (remote / "models" / model / "current.json").read_text() == (local / "models" / model / "current.json").read_text()
        # The promotion log lives beside the versions, on the object store too.
        (promoted,) = [json.loads(line) for line in (remote / "models" / model / "promotions.jsonl").read_text().splitlines()]
        assert promoted["event"] == "promoted" and promoted["to_version"] in (remote / "models" / model / "current.json").read_text()
    page = (remote / "reports" / "daily" / f"{LAST_DAY}.html").read_text()
    assert "Nature Remo" in page and "Exposure" in page
