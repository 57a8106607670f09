"""Endpoint evidence in the anomaly detector: a window whose Internet flows go to server ports the device
never used in training scores higher than the same window on its own ports.

All flows and services here are FICTIONAL test records (documentation addresses 198.51.100.0/24,
203.0.113.0/24 and 192.0.2.0/24, device MACs 02:00:...).
"""

import json

import numpy as np
import pandas as pd
import pytest

from iot_assets.core import anomaly, novelty
from iot_assets.core.features import (
    ANOMALY_FEATURES,
    SERVICE_FEATURES,
    ServiceRowsError,
    server_ports,
    service_features,
    training_services,
    unseen_services,
)
from iot_assets_tests.support.windows import synthetic_windows

KNOWN, OTHER_KNOWN, NEW = "198.51.100.0/24:443/6", "192.0.2.0/24:8883/6", "203.0.113.0/24:8443/6"
ROTATED = "203.0.113.0/24:443/6"  # the cloud moved the device to another /24, on its usual port
CUT = pd.Timestamp("2019-07-04", tz="UTC")


def rows(mac: str, starts, service: str, flows: int = 6) -> pd.DataFrame:
    """`novelty.service_flows` rows: `flows` flows of `mac` to `service` in each window of `starts`."""
    starts = pd.DatetimeIndex(starts)
    return pd.DataFrame({"device_key": mac, "device_name": "lamp", "day": starts.strftime("%Y-%m-%d"),
                         "window_start": starts, "service": service, "flows": flows})[novelty.SERVICE_COLUMNS]


def usual_services(windows: pd.DataFrame) -> pd.DataFrame:
    """Every device talks to KNOWN every hour and to OTHER_KNOWN every sixth hour."""
    parts = []
    for mac, part in windows.groupby("device_key"):
        starts = part["window_start"]
        parts += [rows(mac, starts, KNOWN), rows(mac, starts[starts.dt.hour % 6 == 0], OTHER_KNOWN, 2)]
    return pd.concat(parts, ignore_index=True)


def test_service_features_count_unseen_ports_in_the_window_and_the_trailing_day():
    mac = "02:00:00:00:00:01"
    services = pd.concat([rows(mac, ["2019-07-01 06:00"], KNOWN, 10), rows(mac, ["2019-07-02 00:00"], ROTATED, 10),
                          rows(mac, ["2019-07-02 05:00"], NEW, 30)], ignore_index=True)
    windows = pd.DataFrame({"device_key": mac, "window_start": pd.to_datetime(
        ["2019-07-02 00:00", "2019-07-02 03:00", "2019-07-02 05:00", "2019-07-02 06:00", "2019-07-03 06:00"], utc=True)})
    ports = server_ports(services)
    assert ports["service"].tolist() == ["443/6", "443/6", "8443/6"]
    unseen = unseen_services(ports, {mac: {"443/6"}})
    assert unseen.tolist() == [False, False, True]  # a new /24 on the usual port is not news
    out = service_features(windows, services, unseen)
    assert list(out.columns) == SERVICE_FEATURES
    np.testing.assert_allclose(out["w_log_service_flows"], np.log1p([10, 0, 30, 0, 0]))
    # A window without Internet flows has nothing unseen; the trailing 24 hours still hold the
    # 30 new flows (and, at 05:00, the 10 known ones of 07-01 06:00 and 07-02 00:00: 30 / 50).
    assert out["w_unseen_port_share"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(out["c_unseen_port_share"], [0.0, 0.0, 30 / 50, 30 / 40, 0.0])


def test_training_rows_are_judged_against_the_other_training_days():
    mac = "02:00:00:00:00:01"
    services = pd.concat([rows(mac, ["2019-07-01 01:00", "2019-07-02 01:00"], KNOWN),
                          rows(mac, ["2019-07-02 02:00"], NEW)], ignore_index=True)
    windows = pd.DataFrame({"device_key": mac, "window_start": services["window_start"]})
    train_rows = training_services(services, windows)
    known = {mac: set(train_rows["service"])}
    # Against every training day, nothing is unseen; each row against the OTHER days, the
    # service of one day only is.
    assert unseen_services(services, known).tolist() == [False, False, False]
    assert unseen_services(services, known, train_rows).tolist() == [False, False, True]


def test_service_rows_without_a_column_are_refused_by_name():
    services = rows("02:00:00:00:00:01", ["2019-07-01"], KNOWN).drop(columns="service")
    with pytest.raises(ServiceRowsError, match="service"):
        training_services(services, pd.DataFrame({"device_key": [], "window_start": []}))


@pytest.fixture(scope="module")
def fitted():
    windows = synthetic_windows(devices=3, days=5)
    services = usual_services(windows)
    train = windows[windows["window_start"] < CUT]
    detector = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(train, seed=0, services=services)
    return detector, windows[windows["window_start"] >= CUT].reset_index(drop=True), services


def moved(services: pd.DataFrame, macs: list[str], since: pd.Timestamp, to: str = NEW) -> pd.DataFrame:
    """`services` with every flow of `macs` from `since` on moved to the service `to`."""
    out = services.copy()
    out.loc[out["device_key"].isin(macs) & (out["window_start"] >= since), "service"] = to
    return out


def test_a_window_on_unseen_backends_scores_higher_than_the_same_window_on_known_ones(fitted):
    detector, later, services = fitted
    assert detector.features[-len(SERVICE_FEATURES):] == SERVICE_FEATURES
    mac = sorted(detector.known_ports)[0]
    assert detector.known_ports[mac] == {"443/6", "8883/6"}
    at = CUT + pd.Timedelta(hours=30)
    same = detector.score(later, services=services)
    changed = detector.score(later, services=moved(services, [mac], at))
    window = (later["device_key"] == mac) & (later["window_start"] == at + pd.Timedelta(hours=2))
    assert changed.loc[window, "score"].iloc[0] > same.loc[window, "score"].iloc[0]
    assert changed.loc[window, "anomaly"].iloc[0] and not same.loc[window, "anomaly"].iloc[0]
    assert "unseen_port_share" in changed.loc[window, "top_features"].iloc[0]
    # The other devices and the hours before the change score the same.
    untouched = (later["device_key"] != mac) | (later["window_start"] < at)
    np.testing.assert_allclose(changed.loc[untouched, "score"], same.loc[untouched, "score"])
    # The cloud moving the device to another /24 on its usual port changes nothing.
    rotated = moved(services, [mac], at, ROTATED)
    np.testing.assert_allclose(detector.score(later, services=rotated)["score"], same["score"])


def test_every_device_moving_to_new_backends_at_once_is_not_the_network(fitted):
    """The LAN's hosts can raise a device's broadcast shares, never move its backends: a move of
    every device at the same hour stays each device's own (a compromise of them all)."""
    detector, later, services = fitted
    at = CUT + pd.Timedelta(hours=30)
    scored = detector.score(later, services=moved(services, sorted(detector.known_ports), at))
    after = later["window_start"] >= at + pd.Timedelta(hours=2)
    assert scored.loc[after, "anomaly"].mean() > 0.9
    assert not scored.loc[after, "network_features"].str.contains("unseen_port").any()


def test_a_detector_with_endpoint_evidence_needs_the_service_rows_and_keeps_them_on_disk(fitted):
    detector, later, services = fitted
    with pytest.raises(anomaly.MissingServicesError, match="device_services"):
        detector.score(later)
    loaded = anomaly.AnomalyDetector.from_files(detector.to_files())
    assert loaded.known_ports == detector.known_ports and loaded.features == detector.features
    changed = moved(services, sorted(detector.known_ports)[:1], CUT + pd.Timedelta(hours=30))
    np.testing.assert_allclose(loaded.score(later, services=changed)["score"].to_numpy(float),
                               detector.score(later, services=changed)["score"].to_numpy(float))


def test_a_detector_without_endpoint_evidence_scores_as_before():
    windows = synthetic_windows(devices=2, days=4)
    train, later = windows[windows["window_start"] < CUT], windows[windows["window_start"] >= CUT]
    plain = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(train, seed=0)
    assert plain.known_ports is None and not set(SERVICE_FEATURES) & set(plain.features)
    # Service rows handed to it are not used: the same scores with or without them.
    np.testing.assert_allclose(plain.score(later)["score"].to_numpy(float),
                               plain.score(later, services=usual_services(windows))["score"].to_numpy(float))


def test_most_devices_flagged_at_once_on_moves_their_backends_do_not_explain_is_the_capture(fitted):
    detector, later, services = fitted
    macs = sorted(detector.known_ports)
    at = CUT + pd.Timedelta(hours=30)

    def each_its_own_move(on: list[str]) -> pd.DataFrame:
        """At `at`, the first device's bytes in fall and the second's packets out rise: other features,
        which `network_moves` (the same feature the same way) does not take for the network."""
        out = later.copy()
        for mac, feature, step in zip(on, ["w_log_bytes_in", "w_log_packets_out"], [-6.0, 6.0]):
            out.loc[(out["device_key"] == mac) & (out["window_start"] == at), feature] += step
        return out

    alone = detector.score(each_its_own_move(macs[:1]), services=services)
    row = (later["device_key"] == macs[0]) & (later["window_start"] == at)
    assert alone.loc[row, "anomaly"].iloc[0] and alone.loc[row, "network_features"].iloc[0] == ""
    # Two of three devices at once, their backends as usual: the capture's, not flagged, and said so.
    together = detector.score(each_its_own_move(macs[:2]), services=services)
    rows = later["device_key"].isin(macs[:2]) & (later["window_start"] == at)
    assert not together.loc[rows, "anomaly"].any()
    assert together.loc[rows, "network_features"].str.contains("capture-wide").all()
    # With the second device on new server ports too, only one is unexplained: both flagged.
    own_change = detector.score(each_its_own_move(macs[:2]), services=moved(services, macs[1:2], at))
    assert own_change.loc[rows, "anomaly"].all()


def test_a_saved_detector_with_endpoint_features_but_no_known_ports_is_refused(fitted):
    files = fitted[0].to_files()
    meta = json.loads(files["detector.json"])
    meta["known_ports"] = None
    with pytest.raises(ValueError, match="known ports"):
        anomaly.AnomalyDetector.from_files({**files, "detector.json": json.dumps(meta).encode()})
