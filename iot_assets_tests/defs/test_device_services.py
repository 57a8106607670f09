"""The `device_services` asset: per MAC and window, the backend services contacted, the same
services with pseudonymisation on and off; the classifier and the inventory use them.

The archives are the generated sample (FICTIONAL flows in the published format).
"""

import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from iot_assets.core import classifier, device_inventory, novelty, splits
from iot_assets_tests.support.definitions import assets_for, resources_for

DAY = "2019-06-26"


def _services_of_day(sample_dir, tmp_path, **env) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(device_services, clean_flows) of DAY from a data folder of its own."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data / "raw")
    flows = assets_for(**env)
    resources = resources_for(data, **env)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([flows.raw_archives], resources=resources, instance=instance).success
    result = dg.materialize([flows.raw_archives, flows.decoded_flows, flows.collector_files, flows.collector_flows,
                             flows.clean_flows, flows.device_services], resources=resources, instance=instance,
                            partition_key=DAY,
                            selection=["decoded_flows", "clean_flows", "clean_rejects", "flow_sample", "device_services"])
    assert result.success
    services = pd.read_parquet(data / "lake" / "device_services" / f"day={DAY}" / "part-0.parquet")
    clean = pd.read_parquet(data / "lake" / "clean_flows" / f"day={DAY}" / "part-0.parquet")
    return services, clean


@pytest.mark.slow
def test_device_services_count_every_backend_flow_and_survive_pseudonymisation(sample_dir, tmp_path):
    services, clean = _services_of_day(sample_dir, tmp_path / "on")
    assert list(services.columns) == [c for c in novelty.SERVICE_COLUMNS if c != "day"]  # the lake keeps the day
    # Every Internet flow but DNS, NTP and DNS over TLS is counted once, in the window it started in.
    server_port = np.minimum(clean["remote_port"], clean["device_port"])
    backend = clean[(clean["remote_scope"] == "internet") & ~server_port.isin(novelty.ENDPOINT_IGNORED_PORTS)]
    assert services["flows"].sum() == len(backend) > 0
    per_device = backend.groupby("device_name").size()
    assert services.groupby("device_name")["flows"].sum().to_dict() == per_device.to_dict()
    assert (services["window_start"].dt.strftime("%Y-%m-%d") == DAY).all()
    assert services["service"].str.fullmatch(r"\d+\.\d+\.\d+\.0/24:\d+/\d+|[0-9a-f:]+/48:\d+/\d+").all()
    # Internet peers stay in clear under pseudonymisation (only MACs and LAN addresses change): the
    # services of each device are the same as in a run in clear, its MAC is not.
    clear, _ = _services_of_day(sample_dir, tmp_path / "off", IOT_ASSETS_PSEUDONYMISE="off")
    by_device = {name: set(part["service"]) for name, part in services.groupby("device_name")}
    assert by_device == {name: set(part["service"]) for name, part in clear.groupby("device_name")}
    assert set(services["device_key"]).isdisjoint(set(clear["device_key"]))


def test_the_inventory_asset_path_names_a_stranger_unknown_by_its_backend(monkeypatch):
    """What device_classifier and device_inventory do with the services: a MAC whose windows
    look like a known model's but whose flows go to a backend no model used is `unknown`."""
    from iot_assets_tests.support.windows import synthetic_windows

    monkeypatch.setattr(classifier, "BOOSTER", classifier.LODO_BOOSTER)  # a light booster: the names are not judged here

    windows = synthetic_windows(devices=3, days=8)
    days = sorted(splits.window_days(windows).unique())
    rows = []
    for d, backend in enumerate(["198.51.100.0/24:443/6", "203.0.113.0/24:8883/6", "192.0.2.0/24:443/6"]):
        for day in days:
            rows.append({"device_key": f"02:00:00:00:00:{d:02d}", "device_name": f"device {d}", "day": day,
                         "window_start": pd.Timestamp(f"{day} 10:00", tz="UTC"), "service": backend, "flows": 40})
    services = pd.DataFrame(rows, columns=novelty.SERVICE_COLUMNS)
    split = splits.TimeSplit.of(windows, 0.75)
    model, metrics, _ = classifier.train_and_evaluate(windows, split, seed=0, endpoint_services=services)
    assert model.endpoints.services["device 1"] == {"203.0.113.0/24:8883/6"}
    assert metrics["endpoints"]["threshold"] > 0 and metrics["day_level"]["accuracy"] == 1.0
    back = classifier.DeviceClassifier.from_files(model.to_files())  # as the model store serves it
    day = split.eval_days[-1]
    # A stranger: device 1's windows under a new MAC, its flows to a cloud no model used.
    stranger = windows[windows["device_name"] == "device 1"].assign(device_key="02:00:00:00:00:09", device_name=None)
    stranger_services = services[services["device_name"] == "device 1"].assign(
        device_key="02:00:00:00:00:09", device_name=None, service="233.252.0.0/24:443/6")
    inventory = device_inventory.predict_inventory(back, pd.concat([windows, stranger], ignore_index=True), day,
                                                   endpoint_services=pd.concat([services, stranger_services]))
    by_mac = inventory.set_index("device_key")
    assert by_mac.loc["02:00:00:00:00:09", "status"] == "unknown"
    assert by_mac.loc["02:00:00:00:00:09", "nearest_known"] == "device 1"  # the hint: it moves like device 1
    assert (by_mac.drop(index="02:00:00:00:00:09")["status"] == "known").all()
    # Without services (a lake built before device_services) the same stranger passes as device 1.
    blind = device_inventory.predict_inventory(back, pd.concat([windows, stranger], ignore_index=True), day)
    assert blind.set_index("device_key").loc["02:00:00:00:00:09", "predicted_device"] == "device 1"
