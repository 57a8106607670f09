"""Models that an analyst can trust: safe formats, open-set inventory, incidents, re-baselining."""

import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from iot_assets import anomaly, classifier
from iot_assets.features import ANOMALY_FEATURES, FEATURES


def synthetic_windows(devices: int = 3, days: int = 4, seed: int = 0) -> pd.DataFrame:
    """Hourly windows of a few devices, each with its own feature means: enough to fit any model."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(devices):
        starts = pd.date_range("2019-07-01", periods=days * 24, freq="h", tz="UTC")
        values = rng.normal(loc=d * 0.5, scale=0.3, size=(len(starts), len(FEATURES)))
        frame = pd.DataFrame(values, columns=FEATURES)
        frame.insert(0, "window_start", starts)
        frame.insert(0, "device_mac", f"02:00:00:00:00:{d:02d}")
        frame["device_name"] = f"device {d}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# HBOS compiles with numba on first use: seconds, so it runs in the slow tier.
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "HBOS" else k
                                  for k in sorted(anomaly.DETECTORS)])
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
    split = classifier.TimeSplit.of(windows, 0.7)
    left_out = windows["device_name"] == "device 3"
    model, metrics, _ = classifier.train_and_evaluate(windows[~left_out], split, seed=0)
    assert model.novelty.labels == ["device 0", "device 1", "device 2"]
    assert np.isfinite(model.novelty.threshold) and model.novelty.threshold > 0
    # Known devices' later days are named, at day level.
    assert metrics["day_level"]["accuracy"] == 1.0 and metrics["day_level"]["device_days"] == 3 * 2
    day = split.eval_days[0]
    inventory = classifier.predict_inventory(model, windows, day)
    assert list(inventory.columns) == classifier.INVENTORY_COLUMNS
    by_mac = inventory.set_index("device_mac")
    stranger = by_mac.loc["02:00:00:00:00:03"]
    # device 3's features sit 0.5 above device 2's: unknown, and device 2 is the hint.
    assert stranger["status"] == "unknown" and stranger["predicted_device"] is None
    assert stranger["nearest_known"] == "device 2" and stranger["novelty"] > 1
    known = by_mac.drop(index="02:00:00:00:00:03")
    assert (known["status"] == "known").all() and (known["novelty"] < 1).all()
    assert known["predicted_device"].tolist() == ["device 0", "device 1", "device 2"]
    assert inventory["day"].eq(day).all() and inventory["windows"].eq(24).all()


def test_leave_one_device_out_reports_unknown_days_per_device(monkeypatch):
    windows = synthetic_windows(devices=3, days=6)
    split = classifier.TimeSplit.of(windows, 0.7)
    result = classifier.open_set_evaluation(windows, split, seed=0,
                                            booster_params=dict(n_estimators=5, max_depth=2, learning_rate=0.3))
    assert set(result["left_out"]) == {"device 0", "device 1", "device 2"}
    assert all(v["eval_days"] == 2 for v in result["left_out"].values())
    # Each device is 0.5 (1.7 spreads) from its neighbour in every feature: never taken for one.
    assert result["left_out_unknown_share"] == 1.0 and result["left_out_device_days"] == 6
    assert result["known_days_named_correctly"] == 1.0 and result["known_device_days"] == 3 * 2 * 2
    assert result["left_out"]["device 0"]["nearest_known"] == "device 1"


def test_classifier_with_novelty_round_trips_and_refuses_a_pickled_npz(monkeypatch):
    small_booster(monkeypatch)
    windows = synthetic_windows(devices=3, days=4)
    model, _, _ = classifier.train_and_evaluate(windows, classifier.TimeSplit.of(windows, 0.75), seed=0)
    files = model.to_files()
    assert set(files) == {"model.json", "meta.json", "novelty.npz"}
    loaded = classifier.DeviceClassifier.from_files(files)
    day = "2019-07-04"
    pd.testing.assert_frame_equal(classifier.predict_inventory(loaded, windows, day),
                                  classifier.predict_inventory(model, windows, day))
    with pytest.raises(ValueError, match="novelty.npz"):
        classifier.DeviceClassifier.from_files({**files, "novelty.npz": pickle.dumps({"center": np.zeros(3)})})
