"""Endpoint evidence for the open set: a MAC that does not talk to the named model's backend is `unknown`.

All flows here are FICTIONAL test records (documentation addresses 198.51.100.0/24 and
203.0.113.0/24, device MACs 02:00:...).
"""

import numpy as np
import pandas as pd
import pytest

from iot_assets.core import classifier, device_inventory, novelty


def flows(mac: str, name: str, day: str, remote_ip: str, port: int, count: int, scope: str = "internet") -> pd.DataFrame:
    start = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(count), unit="min")
    return pd.DataFrame({"device_key": mac, "device_name": name, "flow_start": start, "remote_ip": remote_ip,
                         "remote_port": port, "device_port": 40000, "remote_scope": scope, "protocol": 6})


LAMP, CAMERA = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_service_flows_keys_by_prefix_port_protocol_and_skips_infrastructure():
    table = pd.concat([flows(LAMP, "lamp", "2019-07-01", "198.51.100.7", 443, 3),
                       flows(LAMP, "lamp", "2019-07-01", "198.51.100.99", 443, 2),  # same /24: same service
                       flows(LAMP, "lamp", "2019-07-01", "203.0.113.5", 53, 4),  # DNS: no evidence
                       flows(LAMP, "lamp", "2019-07-01", "192.168.1.1", 80, 6, scope="gateway")])
    services = novelty.service_flows(table)
    assert services[["service", "flows"]].values.tolist() == [["198.51.100.0/24:443/6", 5]]
    assert services["day"].tolist() == ["2019-07-01"]
    assert list(services.columns) == novelty.SERVICE_COLUMNS
    by_window = novelty.service_flows(flows(LAMP, "lamp", "2019-07-01", "198.51.100.7", 443, 90), 60)
    assert by_window["flows"].tolist() == [60, 30]  # one a minute: the first hour's 60, then 30
    assert by_window["window_start"].tolist() == list(pd.to_datetime(["2019-07-01 00:00", "2019-07-01 01:00"],
                                                                    utc=True))


def test_service_flows_names_the_missing_column():
    with pytest.raises(novelty.EndpointInputError, match="remote_scope"):
        novelty.service_flows(flows(LAMP, "lamp", "2019-07-01", "198.51.100.7", 443, 1).drop(columns="remote_scope"))


def test_endpoint_coverage_pools_the_days_before():
    table = pd.concat([flows(LAMP, "lamp", "2019-07-01", "198.51.100.7", 443, 30),
                       flows(LAMP, "lamp", "2019-07-02", "203.0.113.9", 8883, 10)])
    coverage = novelty.endpoint_coverage(novelty.service_flows(table), {"lamp": {"198.51.100.0/24:443/6"},
                                                                        "camera": {"203.0.113.0/24:554/6"}}, 2)
    assert coverage.loc[(LAMP, "2019-07-01"), "lamp"] == 1.0
    assert coverage.loc[(LAMP, "2019-07-02"), "lamp"] == 0.75  # 30 of the 40 pooled flows
    assert coverage.loc[(LAMP, "2019-07-02"), "camera"] == 0.0
    assert coverage.loc[(LAMP, "2019-07-02"), "endpoint_flows"] == 40
    only_day_two = novelty.endpoint_coverage(novelty.service_flows(table), {"lamp": {"198.51.100.0/24:443/6"}}, 2,
                                             days=["2019-07-02"])
    assert list(only_day_two.index) == [(LAMP, "2019-07-02")]


def test_calibration_sits_between_own_and_other_coverage_and_leaves_out_a_model():
    index = pd.MultiIndex.from_tuples([(LAMP, "d1"), (LAMP, "d2"), (CAMERA, "d1"), (CAMERA, "d2")],
                                      names=["device_key", "day"])
    coverage = pd.DataFrame({"lamp": [0.9, 0.8, 0.1, 0.1], "camera": [0.0, 0.0, 1.0, 0.6],
                             "endpoint_flows": [100, 100, 100, 100]}, index=index)
    truth = pd.Series(["lamp", "lamp", "camera", "camera"], index=index)
    threshold, figures = novelty.calibrate_endpoints(coverage, truth)
    # lowest own 0.6; best other: 0.0, 0.0, 0.1, 0.1 -> 90th percentile 0.1; halfway 0.35, under 0.5 * 0.6 = 0.3
    assert figures["endpoint_own_low"] == 0.6
    assert threshold == pytest.approx(0.3)
    without_camera, figures = novelty.calibrate_endpoints(coverage, truth, exclude="camera")
    assert figures["endpoint_own_low"] == 0.8  # only the lamp's days, against the lamp alone
    assert without_camera == pytest.approx(0.4)
    assert novelty.calibrate_endpoints(None, None)[0] == 0.0


def test_endpoint_model_calls_a_mac_far_from_the_named_backend_unknown_and_round_trips():
    model = novelty.EndpointModel({"lamp": {"198.51.100.0/24:443/6"}, "camera": {"203.0.113.0/24:554/6"}}, 0.3)
    index = pd.MultiIndex.from_tuples([("a", "d"), ("b", "d"), ("c", "d")], names=["device_key", "day"])
    coverage = pd.DataFrame({"camera": [0.0, 0.9, 0.0], "lamp": [0.1, 0.0, 0.0],
                             "endpoint_flows": [100, 100, novelty.MIN_ENDPOINT_FLOWS - 1]}, index=index)
    named = np.array(["lamp", "camera", "lamp"], dtype=object)
    # a: named lamp, 10% of its flows to the lamp's cloud; b: named camera, 90%; c: too few flows to say
    assert model.unknown(coverage, named).tolist() == [True, False, False]
    back = novelty.EndpointModel.from_json(model.to_json())
    assert back.services == model.services and back.threshold == 0.3
    assert set(model.without("camera").services) == {"lamp"}


def test_inventory_says_unknown_when_the_backend_is_not_the_named_models():
    days = ["2019-07-01", "2019-07-02"]
    windows = pd.DataFrame({"device_key": [LAMP, LAMP, CAMERA, CAMERA], "device_name": [None] * 4,
                            "window_start": pd.to_datetime([f"{d} 10:00" for d in days] * 2, utc=True)})
    proba = pd.DataFrame({"lamp": [0.9, 0.9, 0.8, 0.8], "camera": [0.1, 0.1, 0.2, 0.2]}, index=windows.index)
    endpoints = novelty.EndpointModel({"lamp": {"198.51.100.0/24:443/6"}, "camera": {"203.0.113.0/24:554/6"}}, 0.3)
    # The second MAC moves like a lamp but talks to a cloud no lamp used: an unseen model.
    table = pd.concat([flows(LAMP, "lamp", d, "198.51.100.7", 443, 30) for d in days]
                      + [flows(CAMERA, None, d, "192.0.2.50", 443, 30) for d in days])
    verdicts = device_inventory.verdicts_from(proba, None, windows, 7, endpoints=endpoints,
                                              coverage=endpoints.coverage(novelty.service_flows(table), 7))
    status = verdicts.set_index("device_key")["status"]
    assert status[LAMP].tolist() == ["known", "known"]
    assert status[CAMERA].tolist() == ["unknown", "unknown"]
    assert verdicts.loc[verdicts["device_key"] == CAMERA, "predicted_device"].isna().all()


def test_services_outside_attacks_drops_the_services_of_attacked_windows():
    windows = pd.DataFrame({"device_key": [LAMP, LAMP],
                            "window_start": pd.to_datetime(["2019-07-01 00:00", "2019-07-01 01:00"], utc=True)})
    services = novelty.service_flows(flows(LAMP, "lamp", "2019-07-01", "198.51.100.7", 443, 120))  # two hours
    kept = novelty.services_outside_attacks(services, windows, pd.Series([False, True]))
    assert kept["flows"].sum() == 60 and kept["window_start"].max() < pd.Timestamp("2019-07-01 01:00", tz="UTC")


def test_windows_moved_only_by_the_24_hour_context_do_not_extend_an_incident():
    from iot_assets.core import incidents
    starts = pd.date_range("2019-07-01 10:00", periods=4, freq="h", tz="UTC")
    scores = pd.DataFrame({"device_key": LAMP, "window_start": starts, "anomaly": True,
                           "score_ratio": [5.0, 3.0, 2.5, 2.5]})
    # 10:00 and 11:00: the scan itself (hourly SYN-only share up); 12:00 and 13:00: only the 24-hour share still up.
    deviations = pd.DataFrame({"w_syn_only_share": [6.0, 4.0, 0.0, 0.0], "c_svc_telnet_share": [3.0, 3.0, 3.0, 2.0]},
                              index=scores.index)
    assert incidents.lingering(deviations).tolist() == [False, False, True, True]
    found = incidents.group_incidents(scores, deviations, 60)
    assert len(found) == 1
    assert found.loc[0, "end"] == pd.Timestamp("2019-07-01 12:00", tz="UTC")
    assert found.loc[0, "windows_flagged"] == 2 and found.loc[0, "kind"] == "scan-like"


def test_classifier_keeps_its_endpoints_through_its_files():
    from iot_assets.core.features import FEATURES
    endpoints = novelty.EndpointModel({"lamp": {"198.51.100.0/24:443/6", "203.0.113.0/24:8883/6"}}, 0.25,
                                      {"endpoint_own_low": 0.5})
    files = classifier.DeviceClassifier(None, ["lamp"], list(FEATURES), endpoints=endpoints).to_files()
    assert "endpoints.json" in files
    back = classifier.DeviceClassifier.from_files(files).endpoints
    assert back.services == endpoints.services and back.threshold == 0.25
    assert back.calibration == {"endpoint_own_low": 0.5}
    files["endpoints.json"] = b"\x80not json"
    with pytest.raises(ValueError, match="endpoints.json"):
        classifier.DeviceClassifier.from_files(files)
