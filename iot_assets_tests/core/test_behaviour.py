"""Features, classifier and anomaly detector: no identity reaches the models, splits are by time."""

import json

import numpy as np
import pandas as pd
import pytest

from iot_assets.core import anomaly, classifier, splits
from iot_assets.core.features import (
    ANOMALY_FEATURES,
    FEATURES,
    IDENTITY_COLUMNS,
    build_windows,
)
from iot_assets.synthetic import sample
from iot_assets_tests.support.days import clean_days
from iot_assets_tests.support.records import FIRST_DAY

DEVICES = ["nature_remo", "xiaomi_mijia_led", "philips_hue_bridge", "qrio_hub", "i-o_data_qwatch", "irobot_roomba"]
DAYS = 5




def windows_of(days: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames, previous = [], None
    for d, flows in days.items():
        frames.append(build_windows(flows, previous, d))
        previous = flows
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> pd.DataFrame:
    raw = tmp_path_factory.mktemp("raw")
    sample.generate(raw, FIRST_DAY, DAYS, scale=0.1, seed=3, devices=DEVICES)
    return windows_of(clean_days(raw, tmp_path_factory.mktemp("staged")))


def test_no_identity_reaches_the_features():
    assert not set(IDENTITY_COLUMNS) & set(FEATURES)
    tokens = {token for f in FEATURES for token in f.split("_")}
    assert not tokens & {"mac", "name", "archive", "device", "address"}
    assert set(ANOMALY_FEATURES) <= set(FEATURES)


def test_one_row_per_device_and_hour(windows):
    assert len(windows) == len(DEVICES) * DAYS * 24
    assert not windows.duplicated(["device_key", "window_start"]).any()
    assert windows[FEATURES].notna().all().all()


def test_context_reaches_back_into_the_previous_day(windows):
    remo = windows[windows["device_name"] == "Nature Remo"].sort_values("window_start")
    first_hour_day2 = remo[remo["window_start"] == pd.Timestamp("2019-06-26 00:00", tz="UTC")].iloc[0]
    # The trailing 24 hours hold far more flows than the window itself.
    assert first_hour_day2["c_log_flows"] > first_hour_day2["w_log_flows"] + 2


def test_time_split_puts_earlier_days_in_training():
    train, evaluate = splits.time_split(["2019-07-03", "2019-07-01", "2019-07-02", "2019-07-04"], 0.7)
    assert train == ["2019-07-01", "2019-07-02", "2019-07-03"] and evaluate == ["2019-07-04"]
    assert max(train) < min(evaluate)
    with pytest.raises(ValueError):
        splits.time_split(["2019-07-01"], 0.7)


def test_classifier_is_trained_on_earlier_days_and_reproducible(windows, tmp_path):
    model, metrics, predictions = classifier.train_and_evaluate(windows, splits.TimeSplit.of(windows, 0.6), seed=1)
    assert metrics["train_range"][1] < metrics["eval_range"][0]
    assert (predictions["window_start"].dt.strftime("%Y-%m-%d") >= metrics["eval_range"][0]).all()
    assert metrics["accuracy"] > 0.8 and set(metrics["labels"]) == set(windows["device_name"])
    again, metrics_again, _ = classifier.train_and_evaluate(windows, splits.TimeSplit.of(windows, 0.6), seed=1)
    assert metrics_again["confusion_matrix"] == metrics["confusion_matrix"]
    np.testing.assert_allclose(model.predict_proba(windows), again.predict_proba(windows))
    # Saved in XGBoost's JSON format, loaded back to the same predictions.
    files = model.to_files()
    assert "learner" in json.loads(files["model.json"])
    np.testing.assert_allclose(classifier.DeviceClassifier.from_files(files).predict_proba(windows), model.predict_proba(windows))


def test_identity_columns_do_not_change_predictions(windows):
    model, _, _ = classifier.train_and_evaluate(windows, splits.TimeSplit.of(windows, 0.6), seed=1)
    disguised = windows.assign(device_key="02:00:00:00:00:99", device_name="x", device_category="y")
    np.testing.assert_allclose(model.predict_proba(disguised), model.predict_proba(windows))


def test_per_flow_baseline_runs_on_the_same_labels(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw_flows")
    sample.generate(raw, FIRST_DAY, 2, scale=0.05, seed=3, devices=DEVICES[:3])
    days = list(clean_days(raw, tmp_path_factory.mktemp("staged_flows")).values())
    labels = sorted(days[0]["device_name"].unique())
    result = classifier.per_flow_baseline(days[0], days[1], labels, seed=0)
    assert 0 < result["accuracy"] <= 1 and result["eval_flows"] == len(days[1])
    assert result["train_flows"] == int(days[0].groupby("device_name").size()
                                        .clip(upper=classifier.BASELINE_TRAIN_FLOWS_PER_DEVICE).sum())


def test_per_flow_baseline_trains_on_a_seeded_sample_per_device(tmp_path_factory, monkeypatch):
    raw = tmp_path_factory.mktemp("raw_flows_capped")
    sample.generate(raw, FIRST_DAY, 2, scale=0.05, seed=3, devices=DEVICES[:3])
    days = list(clean_days(raw, tmp_path_factory.mktemp("staged_flows_capped")).values())
    labels = sorted(days[0]["device_name"].unique())
    monkeypatch.setattr(classifier, "BASELINE_TRAIN_FLOWS_PER_DEVICE", 50)
    first = classifier.per_flow_baseline(days[0], days[1], labels, seed=0)
    assert first["train_flows"] == 50 * len(labels) and first["eval_flows"] == len(days[1])
    assert classifier.per_flow_baseline(days[0], days[1], labels, seed=0) == first


def test_anomaly_detector_flags_an_attack_and_holds_its_false_positive_rate(windows):
    train = windows[windows["window_start"] < pd.Timestamp("2019-06-29", tz="UTC")]
    later = windows[windows["window_start"] >= pd.Timestamp("2019-06-29", tz="UTC")].copy()
    detector = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(train, seed=0)
    assert len(detector.devices) == len(DEVICES)
    clean_scores = detector.score(later)
    assert clean_scores["has_model"].all() and clean_scores["anomaly"].mean() < 0.1
    # A window where the device scans: thousands of unanswered SYNs to port 23.
    attacked = later.iloc[[5]].copy()
    attacked["w_syn_only_share"] = 0.95
    attacked["w_unanswered_share"] = 0.99
    attacked["w_log_flows"] += 4
    attacked["w_log_distinct_ips"] = 8.0
    scored = detector.score(attacked)
    assert scored["anomaly"].iloc[0] and "w_" in scored["top_features"].iloc[0]


def test_evaluation_labels_and_metrics():
    windows = pd.DataFrame({
        "device_key": ["m"] * 6, "device_name": ["Nature Remo"] * 6,
        "window_start": pd.date_range("2019-07-01 00:00", periods=6, freq="h", tz="UTC"),
    })
    episodes = pd.DataFrame({"device": ["Nature Remo"], "type": ["scan"],
                             "start": [pd.Timestamp("2019-07-01 01:30", tz="UTC")],
                             "end": [pd.Timestamp("2019-07-01 02:10", tz="UTC")]})
    labels = anomaly.evaluation_labels(windows, episodes, 60, pd.Timedelta(hours=2))
    assert labels.tolist() == [None, "scan", "scan", "aftermath", "aftermath", None]
    scored = windows[["device_key", "window_start"]].assign(
        has_model=True, score_ratio=[0.5, 3.0, 2.0, 1.5, 0.7, 0.6], anomaly=[False, True, True, True, False, False])
    metrics = anomaly.evaluate(scored, labels)
    assert metrics["per_episode_type"]["scan"] == {"roc_auc": 1.0, "recall": 1.0, "windows": 2}
    assert metrics["fpr_clean"] == 0.0 and metrics["aftermath_windows_excluded"] == 2
