"""Models that an analyst can trust: safe formats, open-set inventory, incidents, re-baselining."""

import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from iot_assets.core import anomaly, classifier, device_inventory, incidents, splits
from iot_assets.core.features import ANOMALY_FEATURES, FEATURES
from iot_assets_tests.support.windows import synthetic_windows


@pytest.mark.parametrize("kind", sorted(anomaly.DETECTORS))
def test_anomaly_detector_round_trips_to_identical_scores(kind):
    windows = synthetic_windows()
    train = windows[windows["window_start"] < pd.Timestamp("2019-07-04", tz="UTC")]
    later = windows[windows["window_start"] >= pd.Timestamp("2019-07-04", tz="UTC")]
    detector = anomaly.AnomalyDetector(kind, 0.01, list(ANOMALY_FEATURES)).fit(train, seed=7)
    files = detector.to_files()
    assert set(files) == {"detector.json", "detector.npz"}
    assert json.loads(files["detector.json"])["kind"] == kind
    loaded = anomaly.AnomalyDetector.from_files(files)
    before, after = detector.score(later), loaded.score(later)
    assert before["score"].notna().all()
    np.testing.assert_allclose(after["score"].to_numpy(float), before["score"].to_numpy(float))
    np.testing.assert_allclose(after["threshold"].to_numpy(float), before["threshold"].to_numpy(float))
    assert after["anomaly"].tolist() == before["anomaly"].tolist()


def test_anomaly_detector_refuses_a_pickle():
    windows = synthetic_windows(devices=1, days=3)
    files = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(windows, seed=0).to_files()
    # A pickle where the NPZ should be, and an NPZ holding a pickled object array: both refused.
    with pytest.raises(ValueError, match="detector.npz"):
        anomaly.AnomalyDetector.from_files({**files, "detector.npz": pickle.dumps({"center_0": np.zeros(3)})})
    buffer = io.BytesIO()
    np.savez(buffer, center_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="detector.npz"):
        anomaly.AnomalyDetector.from_files({**files, "detector.npz": buffer.getvalue()})
    with pytest.raises(ValueError, match="detector.json"):
        anomaly.AnomalyDetector.from_files({**files, "detector.json": pickle.dumps({"kind": "KNN"})})


def test_classifier_round_trips_through_json_files():
    windows = synthetic_windows(devices=3, days=2)
    labels = sorted(windows["device_name"].unique())
    booster = xgb.XGBClassifier(n_estimators=5, max_depth=3, random_state=0, n_jobs=1)
    booster.fit(windows[FEATURES].to_numpy(np.float32), windows["device_name"].map({l: i for i, l in enumerate(labels)}))
    model = classifier.DeviceClassifier(booster, labels, list(FEATURES), {"window_minutes": 60})
    files = model.to_files()
    assert "learner" in json.loads(files["model.json"])
    assert json.loads(files["meta.json"])["labels"] == ["device 0", "device 1", "device 2"]
    loaded = classifier.DeviceClassifier.from_files(files)
    assert loaded.labels == labels and loaded.info == {"window_minutes": 60}
    np.testing.assert_allclose(loaded.predict_proba(windows), model.predict_proba(windows))
    with pytest.raises(ValueError, match="model.json"):
        classifier.DeviceClassifier.from_files({**files, "model.json": pickle.dumps(booster)})


def small_booster(monkeypatch):
    """Few trees: the tests judge the open-set logic, not XGBoost."""
    monkeypatch.setattr(classifier, "BOOSTER", dict(n_estimators=10, max_depth=3, learning_rate=0.3))


def test_a_device_never_trained_is_unknown_with_its_nearest_model_as_hint(monkeypatch):
    small_booster(monkeypatch)
    windows = synthetic_windows(devices=4, days=6)
    split = splits.TimeSplit.of(windows, 0.7)
    left_out = windows["device_name"] == "device 3"
    model, metrics, _ = classifier.train_and_evaluate(windows[~left_out], split, seed=0)
    assert model.novelty.labels == ["device 0", "device 1", "device 2"]
    assert np.isfinite(model.novelty.threshold) and model.novelty.threshold > 0
    # Known devices' later days are named, at day level.
    assert metrics["day_level"]["accuracy"] == 1.0 and metrics["day_level"]["device_days"] == 3 * 2
    day = split.eval_days[0]
    inventory = device_inventory.predict_inventory(model, windows, day)
    assert list(inventory.columns) == device_inventory.INVENTORY_COLUMNS
    by_mac = inventory.set_index("device_key")
    stranger = by_mac.loc["02:00:00:00:00:03"]
    # device 3's features sit 0.5 above device 2's: unknown, and device 2 is the hint.
    assert stranger["status"] == "unknown" and stranger["predicted_device"] is None
    assert stranger["nearest_known"] == "device 2" and stranger["novelty"] > 1
    known = by_mac.drop(index="02:00:00:00:00:03")
    assert (known["status"] == "known").all() and (known["novelty"] < 1).all()
    assert known["predicted_device"].tolist() == ["device 0", "device 1", "device 2"]
    assert inventory["day"].eq(day).all() and inventory["windows"].eq(24).all()


def test_a_shift_most_devices_of_a_day_share_does_not_make_them_unknown(monkeypatch):
    small_booster(monkeypatch)
    windows = synthetic_windows(devices=4, days=6)
    split = splits.TimeSplit.of(windows, 0.7)
    model, _, _ = classifier.train_and_evaluate(windows, split, seed=0)
    day = split.eval_days[0]
    of_day = windows[splits.window_days(windows) == day]
    moved = list(FEATURES[:40])  # a fifth of the features, far out
    macs = sorted(of_day["device_key"].unique())

    def inventory_with_shift(shifted: list[str]) -> pd.DataFrame:
        out = of_day.copy()
        out.loc[out["device_key"].isin(shifted), moved] += 20.0
        return device_inventory.predict_inventory(model, out, day).set_index("device_key")

    alone = inventory_with_shift(macs[:1])  # one device's own change: it is unknown
    assert alone.loc[macs[0], "status"] == "unknown"
    assert (alone.drop(index=macs[0])["status"] == "known").all()
    together = inventory_with_shift(macs[:3])  # three of four the same day: the network's
    assert (together["status"] == "known").all() and (together["novelty"] < 1).all()
    # Each is still nearest to its own profile (the name itself is the booster's).
    assert together["nearest_known"].tolist() == [f"device {d}" for d in range(4)]


def test_a_known_device_two_odd_days_in_its_week_stays_named_a_new_model_is_unknown_from_its_first_day(monkeypatch):
    small_booster(monkeypatch)
    windows = synthetic_windows(devices=4, days=10)
    split = splits.TimeSplit.of(windows, 0.7)
    stranger = windows["device_name"] == "device 3"
    model, _, _ = classifier.train_and_evaluate(windows[~stranger], split, seed=0)
    days = split.eval_days  # 2019-07-08 .. 07-10
    odd = windows.copy()
    # device 0 behaves unlike itself on the last two days (the real au camera's doubled DNS
    # on 2019-09-16 and 17); device 3 appears on the last day only.
    late = splits.window_days(odd).isin(days[-2:])
    odd.loc[late & (odd["device_name"] == "device 0"), FEATURES[:60]] += 20.0
    odd = odd[~stranger | (splits.window_days(odd) == days[-1])]
    pooled = device_inventory.predict_inventory(model, odd, days[-1]).set_index("device_key")
    assert pooled.loc["02:00:00:00:00:00", "status"] == "known"
    assert pooled.loc["02:00:00:00:00:00", "predicted_device"] == "device 0"
    assert pooled.loc["02:00:00:00:00:03", "status"] == "unknown"
    assert pooled.loc["02:00:00:00:00:03", "nearest_known"] == "device 2"
    assert pooled["windows"].eq(24).all()  # the day's own windows
    # The day on its own: device 0 is unknown too. Only the windows before the day count.
    alone = device_inventory.day_verdicts(model, odd, pool_days=1, days=[days[-1]]).set_index("device_key")
    assert alone.loc["02:00:00:00:00:00", "status"] == "unknown"
    assert alone.loc["02:00:00:00:00:00", "novelty"] > pooled.loc["02:00:00:00:00:00", "novelty"]
    later_only = device_inventory.predict_inventory(model, odd[splits.window_days(odd) >= days[-2]], days[-2])
    assert later_only.set_index("device_key").loc["02:00:00:00:00:00", "status"] == "unknown"


def test_pooled_days_takes_each_window_into_the_days_of_its_week():
    windows = synthetic_windows(devices=2, days=3)
    windows = windows[~((windows["device_name"] == "device 1") & (splits.window_days(windows) == "2019-07-02"))]
    rows, (mac, day) = device_inventory.pooled_days(windows, pool_days=2)
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays([mac, day])).groupby(level=[0, 1]).size()
    assert counts.to_dict() == {
        ("02:00:00:00:00:00", "2019-07-01"): 24, ("02:00:00:00:00:00", "2019-07-02"): 48,
        ("02:00:00:00:00:00", "2019-07-03"): 48,
        # device 1 has no windows on 07-02: no verdict that day; 07-03 pools 07-03 alone.
        ("02:00:00:00:00:01", "2019-07-01"): 24, ("02:00:00:00:00:01", "2019-07-03"): 24,
    }
    only = device_inventory.pooled_days(windows, pool_days=2, days=["2019-07-03"])[1][1]
    assert set(only) == {"2019-07-03"}


def test_leave_one_device_out_reports_unknown_days_per_device(monkeypatch):
    windows = synthetic_windows(devices=3, days=6)
    split = splits.TimeSplit.of(windows, 0.7)
    result = classifier.open_set_evaluation(windows, split, seed=0,
                                            booster_params=dict(n_estimators=5, max_depth=2, learning_rate=0.3))
    assert set(result["left_out"]) == {"device 0", "device 1", "device 2"}
    assert all(v["eval_days"] == 2 for v in result["left_out"].values())
    # Each device is 0.5 (1.7 spreads) from its neighbour in every feature: never taken for one.
    assert result["left_out_unknown_share"] == 1.0 and result["left_out_device_days"] == 6
    assert result["known_days_named_correctly"] == 1.0 and result["known_device_days"] == 3 * 2 * 2
    assert result["left_out"]["device 0"]["nearest_known"] == "device 1"


def test_leave_one_device_out_without_refits_masks_the_left_out_model(monkeypatch):
    small_booster(monkeypatch)
    windows = synthetic_windows(devices=3, days=6)
    split = splits.TimeSplit.of(windows, 0.7)
    model, _, _ = classifier.train_and_evaluate(windows, split, seed=0)
    refit = classifier.open_set_evaluation(windows, split, seed=0,
                                           booster_params=dict(n_estimators=5, max_depth=2, learning_rate=0.3))
    masked = classifier.open_set_evaluation(windows, split, seed=0, model=model)
    assert masked["lodo_booster"] is None and "left-out column removed" in masked["method"]
    # The open-set side is the same novelty model either way; the names agree on these devices.
    for key in ("left_out_unknown_share", "left_out_device_days", "known_days_named_correctly", "known_device_days"):
        assert masked[key] == refit[key], key
    assert masked["left_out"]["device 2"]["nearest_known"] == "device 1"


def test_classifier_with_novelty_round_trips_and_refuses_a_pickled_npz(monkeypatch):
    small_booster(monkeypatch)
    windows = synthetic_windows(devices=3, days=4)
    model, _, _ = classifier.train_and_evaluate(windows, splits.TimeSplit.of(windows, 0.75), seed=0)
    files = model.to_files()
    assert set(files) == {"model.json", "meta.json", "novelty.npz"}
    loaded = classifier.DeviceClassifier.from_files(files)
    day = "2019-07-04"
    pd.testing.assert_frame_equal(device_inventory.predict_inventory(loaded, windows, day),
                                  device_inventory.predict_inventory(model, windows, day))
    with pytest.raises(ValueError, match="novelty.npz"):
        classifier.DeviceClassifier.from_files({**files, "novelty.npz": pickle.dumps({"center": np.zeros(3)})})


# ---------------------------------------------------------------- incidents

def flagged_scores(mac: str, hours: list[int], ratios: list[float], name: str = "Cam") -> pd.DataFrame:
    starts = pd.date_range("2019-07-01", periods=24, freq="h", tz="UTC")
    ratio = np.zeros(24)
    ratio[hours] = ratios
    return pd.DataFrame({"device_key": mac, "device_name": name, "window_start": starts,
                         "score_ratio": ratio, "anomaly": ratio > 1})


def test_flagged_windows_within_the_gap_make_one_incident_with_its_peak_and_kind():
    scores = flagged_scores("m1", [3, 4, 6, 15], [1.5, 9.0, 2.0, 1.2])
    deviations = pd.DataFrame(0.0, index=scores.index, columns=["w_syn_only_share", "w_log_distinct_ips", "w_log_flows"])
    deviations.loc[4, ["w_syn_only_share", "w_log_distinct_ips"]] = [8.0, 5.0]
    found = incidents.group_incidents(scores, deviations, window_minutes=60)
    # 3, 4 and 6 (one unflagged window between) are one incident; 15 alone at 1.2x is not one.
    assert len(found) == 1
    incident = found.iloc[0]
    assert incident["start"] == pd.Timestamp("2019-07-01 03:00", tz="UTC")
    assert incident["end"] == pd.Timestamp("2019-07-01 07:00", tz="UTC")
    assert incident["windows_flagged"] == 3 and incident["peak_score_ratio"] == 9.0
    assert incident["peak_window"] == pd.Timestamp("2019-07-01 04:00", tz="UTC")
    assert incident["kind"] == "scan-like" and incident["top_features"].startswith("w_syn_only_share (+8.0)")
    # Three quiet windows split 3 from 7, each then a lone window at 1.5x: no incident;
    # a lone window at 3x is one.
    scores = flagged_scores("m1", [3, 7, 20], [1.5, 1.5, 3.0])
    found = incidents.group_incidents(scores, deviations, 60)
    assert found["start"].tolist() == [pd.Timestamp("2019-07-01 20:00", tz="UTC")]
    assert incidents.group_incidents(scores, deviations, 60, gap_windows=3)["windows_flagged"].tolist() == [2, 1]


def test_an_incident_going_on_at_midnight_keeps_its_start_and_id_on_the_next_day():
    day_before = flagged_scores("m1", [21, 22, 23], [3.0, 4.0, 2.0])
    day = flagged_scores("m1", [0, 1, 9], [5.0, 2.0, 1.1])
    day["window_start"] += pd.Timedelta(days=1)
    scores = pd.concat([day_before, day], ignore_index=True)
    deviations = pd.DataFrame(0.0, index=scores.index, columns=["w_log_flows"])
    before = incidents.day_incidents(day_before, deviations.loc[day_before.index], "2019-07-01", 60)
    found = incidents.day_incidents(scores, deviations, "2019-07-02", 60)
    assert len(found) == 1  # 09:00 alone at 1.1x is no incident
    incident = found.iloc[0]
    assert incident["start"] == pd.Timestamp("2019-07-01 21:00", tz="UTC")
    assert incident["end"] == pd.Timestamp("2019-07-02 02:00", tz="UTC")
    assert incident["windows_flagged"] == 5 and incident["peak_score_ratio"] == 5.0
    assert incident["incident"] == before["incident"].iloc[0] == "m1@2019-07-01T21:00"
    # An incident over before the day began is not the day's.
    quiet_day = pd.concat([day_before, day.assign(anomaly=False)], ignore_index=True)
    assert incidents.day_incidents(quiet_day, deviations, "2019-07-02", 60).empty


@pytest.mark.parametrize("moved, kind", [
    ({"w_syn_only_share": 6.0}, "scan-like"),
    ({"w_log_packets_out": 9.0, "w_log_packets_in": 0.0, "w_port_b03_share": 12.0}, "flood-like"),
    ({"w_svc_https_alt_share": 7.0, "w_svc_https_share": -3.0}, "service-mix"),
    ({"c_svc_https_alt_share": 6.0, "c_svc_https_share": -5.5}, "service-mix"),
    ({"c_svc_http_alt_share": 8.0, "c_svc_https_share": -1.3, "w_svc_http_alt_share": 6.0}, "new-endpoint"),
    # Server ports never used in training (the detector's endpoint evidence): new on top, or instead of the usual.
    ({"w_unseen_port_share": 9.0, "c_unseen_port_share": 4.0, "w_log_flows": 2.0}, "new-endpoint"),
    ({"w_unseen_port_share": 9.0, "w_svc_https_share": -6.0}, "service-mix"),
    ({"w_log_bytes_out": 4.0, "w_log_packets_in": 3.0, "w_log_packets_out": 3.0}, "volume"),
    ({"w_payload_per_pkt_in": 5.0}, "other"),
])
def test_kind_rules(moved, kind):
    assert incidents.guess_kind(moved)[0] == kind


def test_incident_evidence_sets_the_incident_flows_against_the_usual_ones():
    start = pd.Timestamp("2019-07-01 03:00", tz="UTC")
    usual = pd.DataFrame({"device_key": "m1", "flow_start": pd.date_range("2019-07-01", periods=20, freq="h", tz="UTC"),
                          "remote_ip": "52.1.2.3", "remote_port": 443, "device_port": 40000, "protocol": 6,
                          "bytes_out": 1000, "bytes_in": 5000})
    usual = usual[(usual["flow_start"] < start) | (usual["flow_start"] >= start + pd.Timedelta(hours=2))]
    attack = pd.DataFrame({"device_key": "m1", "flow_start": start + pd.to_timedelta(np.arange(50), unit="min"),
                           "remote_ip": "203.0.113.9", "remote_port": 8080, "device_port": 50000, "protocol": 6,
                           "bytes_out": 2_000_000, "bytes_in": 0})
    found = pd.DataFrame([{"device_key": "m1", "start": start, "end": start + pd.Timedelta(hours=2)}])
    evidence = incidents.incident_evidence(found, pd.concat([usual, attack], ignore_index=True)).iloc[0]
    assert evidence["evidence_peers"] == "203.0.113.9 (50 flows, 100.00 MB out, 0.00 MB in)"
    assert evidence["evidence_ports"].startswith("tcp/8080 (50 flows")
    assert evidence["usual_peers"] == "52.1.2.3 (18 flows, 0.02 MB out, 0.09 MB in)"
    assert evidence["new_peers"] == 1


def test_incident_metrics_count_false_incidents_per_clean_month_recall_and_delay():
    days = pd.date_range("2019-07-01", periods=4 * 24, freq="h", tz="UTC")
    windows = pd.concat([pd.DataFrame({"device_key": mac, "device_name": name, "window_start": days})
                         for mac, name in (("m1", "Cam"), ("m2", "Plug"))], ignore_index=True)
    episodes = pd.DataFrame({"device": ["Cam", "Cam"], "type": ["scan", "flood"],
                             "start": pd.to_datetime(["2019-07-02 10:30", "2019-07-04 05:00"], utc=True),
                             "end": pd.to_datetime(["2019-07-02 11:30", "2019-07-04 06:00"], utc=True)})
    found = pd.DataFrame({"device_key": ["m1", "m2"],
                          "start": pd.to_datetime(["2019-07-02 11:00", "2019-07-03 08:00"], utc=True),
                          "end": pd.to_datetime(["2019-07-02 13:00", "2019-07-03 09:00"], utc=True)})
    metrics = incidents.incident_metrics(found, episodes, windows, 60, pd.Timedelta(hours=24))
    # Cam: 07-01 clean, 07-02/03 scan and its aftermath, 07-04 flood: one clean day. Plug: four.
    assert metrics["clean_device_days"] == 5 and metrics["false_incidents"] == 1
    assert metrics["false_incidents_per_device_month"] == pytest.approx(6.0)
    assert metrics["per_episode_type"]["scan"] == {"episodes": 1, "detected": 1, "recall": 1.0,
                                                   "delay_minutes_median": 30.0, "delay_minutes_max": 30.0}
    assert metrics["per_episode_type"]["flood"]["recall"] == 0.0


# ---------------------------------------------------------------- champion and challenger

def test_a_challenger_replaces_the_champion_only_when_it_names_the_holdout_better(monkeypatch):
    from iot_assets.core import champion

    small_booster(monkeypatch)
    windows = synthetic_windows(devices=3, days=6)
    window, holdout_days = champion.sliding_split(splits.window_days(windows).unique().tolist(), 3, 2)
    assert window == ["2019-07-02", "2019-07-03", "2019-07-04"] and holdout_days == ["2019-07-05", "2019-07-06"]
    split = splits.TimeSplit(window, holdout_days)
    used = windows[splits.window_days(windows).isin(window + holdout_days)]
    good, _, _ = classifier.train_and_evaluate(used, split, seed=0)
    # A champion trained on shuffled names names the holdout days wrongly.
    shuffled = used.assign(device_name=used["device_name"].sample(frac=1, random_state=0).to_numpy())
    bad, _, _ = classifier.train_and_evaluate(shuffled, split, seed=0)
    holdout = used[splits.window_days(used).isin(holdout_days)]
    keep, figures = champion.compare_classifiers(bad, good, holdout, split.eval_range)
    assert keep == "challenger" and figures["challenger"]["day_accuracy"] == 1.0
    assert figures["champion"]["day_accuracy"] < 1.0 and figures["reason"] == "better day-level accuracy"
    # The other way round the champion stays; a challenger that knows fewer models never wins.
    assert champion.compare_classifiers(good, bad, holdout, split.eval_range)[0] == "champion"
    two = used[used["device_name"] != "device 2"]
    fewer, _, _ = classifier.train_and_evaluate(two, split, seed=0)
    keep, figures = champion.compare_classifiers(bad, fewer, holdout, split.eval_range)
    assert keep == "champion" and figures["reason"].endswith("device 2")


def test_a_challenger_detector_must_stay_within_the_false_positive_budget():
    from iot_assets.core import champion

    windows = synthetic_windows(devices=2, days=6)
    days = splits.window_days(windows)
    train, holdout = windows[days < "2019-07-05"], windows[days >= "2019-07-05"]
    clean = pd.Series([None] * len(holdout), index=holdout.index, dtype=object)
    fitted = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(train, seed=0)
    # A detector fitted on other behaviour flags most of the holdout: it never replaces a good one.
    shifted = train.assign(**{f: train[f] + 3.0 for f in ANOMALY_FEATURES})
    off = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(shifted, seed=0)
    keep, figures = champion.compare_detectors(fitted, off, holdout, clean, ["2019-07-05", "2019-07-06"])
    assert keep == "champion" and figures["challenger"]["fpr_clean"] > 0.5 >= figures["champion"]["fpr_clean"]
    keep, figures = champion.compare_detectors(off, fitted, holdout, clean, ["2019-07-05", "2019-07-06"])
    assert keep == "challenger" and figures["reason"] == "fewer false positives on the holdout days"


# ---------------------------------------------------------------- re-baselining

def test_a_change_that_stays_stable_for_n_days_is_a_new_normal_and_a_coming_and_going_one_is_not():
    from iot_assets.core import rebaseline

    days = [f"2019-09-{d:02d}" for d in range(10, 16)]
    rows = []
    for mac, ratios in (("steady", [0.3, 0.3, 3.0, 3.2, 2.9, 3.1]), ("moving", [0.3, 0.3, 1.5, 6.0, 1.5, 6.0]),
                        ("quiet", [0.3] * 6)):
        for day, ratio in zip(days, ratios):
            rows.append({"device_key": mac, "day": day, "drift_level": "moderate" if ratio > 1 else "none",
                         "flagged_share": 0.6 if ratio > 1 else 0.0, "median_score_ratio": ratio, "changed": ratio > 1})
    daily = pd.DataFrame(rows)
    decisions = rebaseline.decide(daily, stable_days=3)
    assert decisions[["device_key", "from_day", "decided_on", "reason"]].to_dict("records") == [
        {"device_key": "steady", "from_day": "2019-09-12", "decided_on": "2019-09-15", "reason": "stable change"}]
    # Once re-baselined (its new normal starts after the decision), the same change is not decided again.
    assert rebaseline.decide(daily, stable_days=3, since={"steady": "2019-09-16"}).empty
    # Too few changed days yet: nothing; an analyst's acknowledgement: at once.
    assert rebaseline.decide(daily, stable_days=5).empty
    acknowledged = rebaseline.decide(daily, pd.DataFrame({"device_key": ["quiet"], "from_day": ["2019-09-14"]}), 5)
    assert acknowledged[["device_key", "from_day", "reason"]].to_dict("records") == [
        {"device_key": "quiet", "from_day": "2019-09-14", "reason": "acknowledged"}]


def _lan_burst(windows: pd.DataFrame, macs: list[str], at: str, feature: str = "w_svc_mdns_share") -> pd.DataFrame:
    """The windows with `feature` far out on `macs` in the window starting `at`."""
    out = windows.copy()
    hit = out["device_key"].isin(macs) & (out["window_start"] == pd.Timestamp(at, tz="UTC"))
    out.loc[hit, feature] = out[feature].max() + 30.0
    return out


def test_a_move_most_devices_share_in_one_window_is_the_networks_and_flags_none_of_them():
    windows = synthetic_windows(devices=4, days=5)
    cut = pd.Timestamp("2019-07-04", tz="UTC")
    detector = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(windows[windows["window_start"] < cut], 0)
    later = windows[windows["window_start"] >= cut]
    macs = sorted(later["device_key"].unique())
    at = "2019-07-04T07:00"

    alone = detector.score(_lan_burst(later, macs[:1], at))
    one = alone[alone["window_start"] == pd.Timestamp(at, tz="UTC")].set_index("device_key")
    assert one.loc[macs[0], "anomaly"]  # one device's own burst is its anomaly
    assert "w_svc_mdns_share" in one.loc[macs[0], "top_features"]
    assert one.loc[macs[0], "network_features"] == ""

    shared = detector.score(_lan_burst(later, macs[:3], at))  # three of four devices: the network's
    hour = shared[shared["window_start"] == pd.Timestamp(at, tz="UTC")].set_index("device_key")
    for mac in macs[:3]:
        assert hour.loc[mac, "network_features"].startswith("w_svc_mdns_share (+")
        assert "w_svc_mdns_share" not in hour.loc[mac, "top_features"]
        assert not hour.loc[mac, "anomaly"]
    assert hour.loc[macs[3], "network_features"] == ""
    deviations = detector.deviations(_lan_burst(later, macs[:3], at))
    assert (deviations.loc[shared["window_start"] == pd.Timestamp(at, tz="UTC"), "w_svc_mdns_share"] == 0).all()


def test_a_window_within_a_spread_of_its_band_everywhere_is_not_flagged_whatever_its_rank():
    windows = synthetic_windows(devices=1, days=5)
    cut = pd.Timestamp("2019-07-04", tz="UTC")
    detector = anomaly.AnomalyDetector("ECOD", 0.01, list(ANOMALY_FEATURES)).fit(windows[windows["window_start"] < cut], 0)
    model = next(iter(detector.devices.values()))
    later = windows[windows["window_start"] >= cut].copy()
    # Every feature half a spread past its band: beyond every training value for ECOD's ranks.
    edge = model.center + (anomaly.SHRINK + 0.5) * model.spread
    later.loc[:, detector.features] = np.tile(edge, (len(later), 1))
    scored = detector.score(later)
    assert (scored["score"] > scored["threshold"]).all()
    assert not scored["anomaly"].any()
    later.loc[:, detector.features] = np.tile(model.center + (anomaly.SHRINK + 1.5) * model.spread, (len(later), 1))
    assert detector.score(later)["anomaly"].all()


def test_detectors_are_chosen_at_their_thresholds_within_the_alert_budget():
    assert anomaly.within_budget({"KNN": 0.015, "ECOD": 0.004, "LOF": 0.08}, 0.01) == ["KNN", "ECOD"]
    # None within twice the target: those at the lowest rate seen.
    assert anomaly.within_budget({"KNN": 0.041, "ECOD": 0.0405, "LOF": 0.08}, 0.01) == ["KNN", "ECOD"]
